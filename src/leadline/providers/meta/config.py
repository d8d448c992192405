from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from leadline.config import ChannelConfig

GRAPH_API_BASE_URL = "https://graph.facebook.com/v25.0"


class MetaChannelConfig(ChannelConfig):
    """A business number on the WhatsApp Cloud API."""

    provider: Literal["meta"] = "meta"
    phone_number_id: str
    waba_id: str | None = None
    """The WhatsApp Business Account id: templates live there, and template status webhooks name it."""
    app_secret: SecretStr
    """The Meta app's secret; webhook signatures (X-Hub-Signature-256) are keyed with it."""
    verify_token: SecretStr
    """The token typed into the App Dashboard for the webhook subscription handshake."""
    access_token: SecretStr | None = None
    """System-user token for sending; without it the channel only receives."""
    app_id: str | None = None
    """The Meta app's id. Needed only to submit templates with a media header without ``meta_handle``:
    leadline then uploads the header's example media through the app's Resumable Upload API."""

    @property
    def can_send(self) -> bool:
        return self.access_token is not None

    @property
    def graph_base_url(self) -> str:
        return (self.api_base_url or GRAPH_API_BASE_URL).rstrip("/")
