from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from leadline.config import ChannelConfig

TWILIO_API_BASE_URL = "https://api.twilio.com"
TWILIO_CONTENT_BASE_URL = "https://content.twilio.com"


class TwilioChannelConfig(ChannelConfig):
    """A WhatsApp sender on Twilio."""

    provider: Literal["twilio"] = "twilio"
    account_sid: str
    auth_token: SecretStr
    """Keys X-Twilio-Signature on webhooks and authenticates API calls."""
    messaging_service_sid: str | None = None
    """Templates (Content SIDs) are sent through a Messaging Service."""
    content_api_base_url: str | None = None

    @property
    def messages_base_url(self) -> str:
        return (self.api_base_url or TWILIO_API_BASE_URL).rstrip("/")

    @property
    def content_base_url(self) -> str:
        return (self.content_api_base_url or TWILIO_CONTENT_BASE_URL).rstrip("/")
