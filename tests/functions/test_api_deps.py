"""The API's Redis client: its command packer writes exactly what redis-py's would."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import HiredisRespSerializer
from redis.exceptions import DataError

from functions.api.deps import StrCommandPacker, connect_redis
from functions.settings import Settings

arguments = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=12).map(bytearray),
    st.binary(max_size=12).map(lambda data: memoryview(data)),
)
names = st.sampled_from(["MGET", "SET", "CLIENT SETNAME", "JSON.GET", " GET", "get", "ÉCHO"])


@given(name=names, args=st.lists(arguments, max_size=12))
def test_same_bytes_as_redis_py_for_any_command(name: str, args: list[Any]) -> None:
    stock = HiredisRespSerializer().pack(name, *args)  # type: ignore[arg-type]  # its hint is off
    assert StrCommandPacker().pack(name, *args) == stock


def test_a_non_contiguous_memoryview_is_packed_by_value() -> None:
    # hiredis alone would pack the underlying buffer (b"abc"), not the view's bytes.
    view = memoryview(b"abcdef")[::2]
    packed = b"".join(StrCommandPacker().pack("SET", "key", view))
    assert packed.endswith(b"$3\r\nace\r\n")


def test_unsupported_arguments_fail_as_in_redis_py() -> None:
    with pytest.raises(DataError):
        StrCommandPacker().pack("SET", "key", None)


def test_the_client_uses_it_against_a_real_redis(redis_url: str, redis_client: redis.Redis) -> None:
    client = connect_redis(Settings(redis_url=redis_url))
    try:
        client.mset({f"ltp:NSE_EQ:{i}": f"{i}.5" for i in range(1, 2001)})
        keys = [f"ltp:NSE_EQ:{i}" for i in range(1, 2001)]
        assert client.mget(keys) == [f"{i}.5".encode() for i in range(1, 2001)]
        assert client.set("ltp:IDX_I:13", "22000.5", nx=True, ex=30) is True
        assert client.get("ltp:IDX_I:13") == b"22000.5"
    finally:
        client.close()
