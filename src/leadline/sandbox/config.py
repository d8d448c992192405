"""What the sandbox needs to impersonate the providers: their ids and secrets, and where leadline is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from leadline.config import LeadlineConfig

StatusMode = Literal["auto", "manual"]

DEFAULT_WABA_ID = "310000000000001"


@dataclass(frozen=True, slots=True)
class MetaSandboxChannel:
    """One Cloud API phone number as Meta knows it."""

    name: str
    phone_number_id: str
    business_number: str
    """E.164 (``+15550001234``); webhooks carry it as ``display_phone_number`` without the ``+``."""
    app_secret: str
    """Signs the webhooks (``X-Hub-Signature-256``)."""
    access_token: str | None = None
    """The bearer token sends must carry; None refuses every send, as Meta would without a token."""
    waba_id: str = DEFAULT_WABA_ID


@dataclass(frozen=True, slots=True)
class TwilioSandboxChannel:
    """One Twilio WhatsApp sender as Twilio knows it."""

    name: str
    account_sid: str
    auth_token: str
    """Checks HTTP Basic auth on API calls and signs the webhooks (``X-Twilio-Signature``)."""
    business_number: str
    """E.164 (``+15550001234``); Twilio addresses it as ``whatsapp:+15550001234``."""
    messaging_service_sid: str | None = None


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything a sandbox is started with. Runtime changes (status mode, faults) go through its control API."""

    leadline_url: str
    """Where the sandbox calls leadline's webhooks (``http://127.0.0.1:8000``)."""
    leadline_public_url: str | None = None
    """The URL Twilio signatures cover (leadline's ``public_url``); defaults to ``leadline_url``."""
    meta: tuple[MetaSandboxChannel, ...] = ()
    twilio: tuple[TwilioSandboxChannel, ...] = ()
    status_mode: StatusMode = "auto"
    status_delay: float = 0.2
    """Seconds between a send and its ``sent`` callback, and between later steps, in ``auto`` mode."""
    timeout_fault_seconds: float = 30.0
    """How long a ``timeout`` fault holds a request at most (the client gives up well before)."""
    sandbox_url: str | None = None
    """How leadline reaches the sandbox, for media URLs in injected webhooks; defaults to the address
    the control request came in on."""
    meta_ascii_json: bool = True
    """Escape non-ASCII in Meta webhook bodies as ``\\uXXXX``, as Meta does: a receiver that re-serialises
    before checking the signature fails, as it would in production."""

    @property
    def webhook_base_url(self) -> str:
        return self.leadline_url.rstrip("/")

    @property
    def public_base_url(self) -> str:
        return (self.leadline_public_url or self.leadline_url).rstrip("/")

    @classmethod
    def from_leadline(
        cls,
        config: LeadlineConfig,
        leadline_url: str,
        *,
        status_mode: StatusMode = "auto",
        status_delay: float = 0.2,
    ) -> SandboxConfig:
        """Impersonate the Meta and Twilio channels of leadline's own configuration.

        Twilio signatures are computed against leadline's ``public_url`` when it is set.
        """
        from leadline.providers.meta.config import MetaChannelConfig
        from leadline.providers.twilio.config import TwilioChannelConfig

        meta = tuple(
            MetaSandboxChannel(
                name=channel.name,
                phone_number_id=channel.phone_number_id,
                business_number=channel.business_number,
                app_secret=channel.app_secret.get_secret_value(),
                access_token=channel.access_token.get_secret_value() if channel.access_token else None,
                waba_id=channel.waba_id or DEFAULT_WABA_ID,
            )
            for channel in config.channels
            if isinstance(channel, MetaChannelConfig)
        )
        twilio = tuple(
            TwilioSandboxChannel(
                name=channel.name,
                account_sid=channel.account_sid,
                auth_token=channel.auth_token.get_secret_value(),
                business_number=channel.business_number,
                messaging_service_sid=channel.messaging_service_sid,
            )
            for channel in config.channels
            if isinstance(channel, TwilioChannelConfig)
        )
        return cls(
            leadline_url=leadline_url,
            leadline_public_url=config.settings.public_url,
            meta=meta,
            twilio=twilio,
            status_mode=status_mode,
            status_delay=status_delay,
        )
