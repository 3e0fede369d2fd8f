"""The simulator's packet encoders produce exactly the documented v2 layouts."""

from __future__ import annotations

import struct

import pytest

from local.dhan_sim import packets
from streamer.decoder import (
    DepthLevel,
    Disconnect,
    Full,
    MarketStatus,
    OpenInterest,
    PrevClose,
    Quote,
    Ticker,
    decode_frame,
)

DEPTH = tuple(DepthLevel(10 + i, 20 + i, i, i + 1, 100.0 - i, 100.5 + i) for i in range(5))
SAMPLES = [
    Ticker(1, 1333, 1234.5, 1_700_019_800),
    Quote(2, 49081, 101.25, 75, 1_700_019_801, 100.5, 12_000, 300, 400, 99.0, 98.5, 102.0, 97.25),
    OpenInterest(2, 49081, 1_234_567),
    PrevClose(0, 13, 22_000.5, 0),
    MarketStatus(0, 0),
    Full(5, 4_294_967_295, 6000.0, 1, 2, 6001.5, 3, 4, 5, 6, 7, 8, 5990.0, 5980.0, 6010.0, 5970.0,
         DEPTH),
    Disconnect(0, 0, 805),
]  # fmt: skip


@pytest.mark.parametrize("packet", SAMPLES, ids=lambda p: type(p).__name__)
def test_each_packet_round_trips_through_the_decoder(packet: object) -> None:
    data = packets.encode(packet)  # type: ignore[arg-type]
    assert decode_frame(data) == ([packet], 0, None)


def test_sizes_and_header_match_the_documented_layout() -> None:
    sizes = {2: 16, 4: 50, 5: 12, 6: 16, 7: 8, 8: 162, 50: 10}
    for packet in SAMPLES:
        data = packets.encode(packet)
        code, length, segment, security_id = struct.unpack_from("<BHBI", data)
        assert (length, len(data)) == (sizes[code], sizes[code])
        assert (segment, security_id) == (packet.segment, packet.security_id)


def test_field_offsets_of_the_full_packet() -> None:
    data = packets.encode(SAMPLES[5])
    assert struct.unpack_from("<I", data, 34)[0] == 6  # OI
    assert struct.unpack_from("<f", data, 46)[0] == 5990.0  # open
    assert struct.unpack_from("<f", data, 58)[0] == 5970.0  # low
    assert struct.unpack_from("<IIHHff", data, 62) == tuple(DEPTH[0])
    assert struct.unpack_from("<IIHHff", data, 142) == tuple(DEPTH[4])


def test_ltt_offsets_point_at_the_ltt_field() -> None:
    for code, packet in ((2, SAMPLES[0]), (4, SAMPLES[1]), (8, SAMPLES[5])):
        data = packets.encode(packet)
        assert struct.unpack_from("<I", data, packets.LTT_OFFSET[code])[0] == packet.ltt  # type: ignore[union-attr]


def test_frame_concatenates_and_raw_builds_unknown_codes() -> None:
    unknown = packets.raw(99, 1, 7, b"\x00" * 12)
    data = packets.frame([SAMPLES[0], unknown, packets.disconnect(814)])
    decoded = decode_frame(data)
    assert decoded.packets == [SAMPLES[0], Disconnect(0, 0, 814)]
    assert decoded.skipped == 1 and decoded.error is None


def test_full_rejects_a_wrong_number_of_depth_levels() -> None:
    with pytest.raises(ValueError, match="5 depth levels"):
        packets.full(1, 1, 1.0, 1, 1, 1.0, 1, 1, 1, 1, 1, 1, 1.0, 1.0, 1.0, 1.0, DEPTH[:4])
