"""Sandbox mode: with no channels configured, ``leadline serve`` runs against the built-in sandbox so a
new user sees the whole loop (a customer writes, the timeline shows it, a reply goes out, the ticks turn
to read) without any credentials. Nothing here is used once real channels are configured."""

from __future__ import annotations

from typing import Any

from leadline.config import LeadlineConfig, config_from_mapping

SANDBOX_API_KEY = "sandbox-api-key-not-for-production"


def sandbox_mode_mapping(base: dict[str, Any], *, leadline_url: str, sandbox_url: str) -> dict[str, Any]:
    """``base`` (the user's file, without channels) plus one sandbox channel per provider."""
    data = dict(base)
    data.setdefault("public_url", leadline_url)
    data.setdefault("default_channel", "sandbox-meta")
    data["api_keys"] = [*data.get("api_keys", []), {"name": "sandbox", "key": SANDBOX_API_KEY}]
    data["channels"] = [
        {
            "name": "sandbox-meta",
            "provider": "meta",
            "business_number": "+15550001234",
            "phone_number_id": "420000000000002",
            "waba_id": "310000000000001",
            "app_secret": "sandbox-meta-app-secret",
            "verify_token": "sandbox-meta-verify-token",
            "access_token": "sandbox-meta-access-token",
            "api_base_url": f"{sandbox_url}/meta/v25.0",
        },
        {
            "name": "sandbox-twilio",
            "provider": "twilio",
            "business_number": "+15550005678",
            "account_sid": "AC00000000000000000000000000000001",
            "auth_token": "sandbox-twilio-auth-token-000000",
            "api_base_url": f"{sandbox_url}/twilio",
        },
    ]
    return data


def sandbox_mode_config(base: dict[str, Any], *, leadline_url: str, sandbox_url: str) -> LeadlineConfig:
    return config_from_mapping(sandbox_mode_mapping(base, leadline_url=leadline_url, sandbox_url=sandbox_url))
