"""AzureAd:Kvassert runtime options: background refresh, certificate refresh, shared cache."""

from __future__ import annotations

import base64

import pytest

from kvassert import ConfigError, settings_from_mapping

BASE = {
    "TenantId": "11111111-2222-3333-4444-555555555555",
    "ClientId": "00000000-0000-0000-0000-0000000000c1",
    "ClientCredentials": [{"SourceType": "ClientSecret", "ClientSecret": "x"}],
}
KEY = base64.b64encode(b"0" * 32).decode()


def load(kvassert: object = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    section = dict(BASE)
    if kvassert is not None:
        section["Kvassert"] = kvassert
    return settings_from_mapping({"AzureAd": section}, env=env or {})


def test_defaults() -> None:
    settings = load()
    assert settings.background_refresh is True
    assert settings.certificate_refresh_interval_seconds == 3600
    assert settings.certificate_expiry_warning_days == 30
    assert settings.shared_cache_redis_url is None


def test_values_and_app_service_env_vars() -> None:
    settings = load(
        {"BackgroundRefresh": False, "CertificateRefreshIntervalSeconds": 600},
        env={
            "AzureAd__Kvassert__CertificateExpiryWarningDays": "14",
            "AzureAd__Kvassert__SharedCache__RedisUrl": "rediss://:pw-canary@cache:6380/0",
            "AzureAd__Kvassert__SharedCache__EncryptionKey": KEY,
        },
    )
    assert settings.background_refresh is False
    assert settings.certificate_refresh_interval_seconds == 600
    assert settings.certificate_expiry_warning_days == 14
    assert settings.shared_cache_redis_url == "rediss://:pw-canary@cache:6380/0"
    assert "pw-canary" not in repr(settings) and KEY not in repr(settings)


@pytest.mark.parametrize(
    ("options", "path", "expected"),
    [
        ({"SharedCache": {"EncryptionKey": KEY}}, "SharedCache:RedisUrl", "a Redis URL"),
        ({"SharedCache": {"RedisUrl": "http://x"}}, "SharedCache:RedisUrl", "redis://"),
        ({"SharedCache": {"RedisUrl": "redis://x"}}, "SharedCache:EncryptionKey", "base64"),
        (
            {"SharedCache": {"RedisUrl": "redis://x", "EncryptionKey": "short-canary"}},
            "SharedCache:EncryptionKey",
            "16 characters",
        ),
        ({"SharedCache": "redis://x"}, "Kvassert:SharedCache", "an object"),
        ({"CertificateRefreshIntervalSeconds": 5}, "CertificateRefreshIntervalSeconds", "60"),
        ({"BackgroundRefresh": "maybe"}, "BackgroundRefresh", "true or false"),
    ],
)
def test_errors_name_the_path(options: dict[str, object], path: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(options)
    assert path in info.value.path
    assert expected in info.value.expected
    assert "canary" not in str(info.value)
