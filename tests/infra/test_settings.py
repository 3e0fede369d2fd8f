"""Deployment settings come from CDK context, with checks that name the bad key."""

from __future__ import annotations

import aws_cdk
import pytest

from core.errors import ConfigError
from infra.settings import DeploySettings
from tests.infra.helpers import cdk_json_context


def settings_from(context: dict[str, object]) -> DeploySettings:
    return DeploySettings.from_context(aws_cdk.App(context=context).node)


def test_cdk_json_holds_exactly_the_defaults() -> None:
    assert settings_from(cdk_json_context()) == DeploySettings()
    assert settings_from({}) == DeploySettings()


def test_command_line_strings_are_cast() -> None:
    settings = settings_from({
        "ltp:natGateways": "2",
        "ltp:cacheReplicas": "1",
        "ltp:cacheMultiAz": "true",
        "ltp:scheduleStart": "08:55",
        "ltp:monthlyBudgetUsd": "150.5",
        "ltp:fanoutReservedConcurrency": "0",
    })
    assert settings.nat_gateways == 2
    assert settings.cache_replicas == 1 and settings.cache_multi_az is True
    assert settings.start_clock == (8, 55)
    assert settings.monthly_budget_usd == 150.5
    assert settings.fanout_reserved_concurrency == 0


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"ltp:natGateways": "0"}, "natGateways must be >= 1"),
        ({"ltp:natGateways": "two"}, "natGateways has a bad value"),
        ({"ltp:cacheMultiAz": "true"}, "cacheReplicas >= 1"),
        ({"ltp:cacheMultiAz": "maybe"}, "cacheMultiAz has a bad value"),
        ({"ltp:scheduleStart": "9am"}, "ltp:scheduleStart must be HH:MM"),
        ({"ltp:scheduleStart": "16:00"}, "ltp:scheduleStop .* must be after"),
        ({"ltp:cacheEngine": "memcached"}, "valkey or redis"),
        ({"ltp:wsMode": "depth"}, "ltp:wsMode must be one of"),
        ({"ltp:webPriceClass": "300"}, "ltp:webPriceClass"),
        ({"ltp:streamKeys": "NSE_EQ:1333,NSE:RELIANCE"}, "ltp:streamKeys: .*NSE:RELIANCE"),
    ],
)
def test_a_bad_value_fails_with_its_name(context: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from(context)


def test_the_default_watchlist_is_the_nifty_50_sample() -> None:
    keys = settings_from({}).watchlist_keys.split(",")
    assert len(keys) == 52 and keys[:2] == ["IDX_I:13", "IDX_I:25"]
    assert "NSE_EQ:2885" in keys  # RELIANCE
    assert settings_from({"ltp:streamKeys": "none"}).watchlist_keys == ""
    given = settings_from({"ltp:streamKeys": " NSE_EQ:1333, IDX_I:13,NSE_EQ:1333"})
    assert given.watchlist_keys == "NSE_EQ:1333,IDX_I:13"
