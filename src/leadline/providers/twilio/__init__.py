"""Twilio's WhatsApp API."""

from leadline.providers.base import ProviderPlugin
from leadline.providers.twilio.account import check_twilio_credentials
from leadline.providers.twilio.client import TwilioClient
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.webhook import TwilioWebhookTranslator

PLUGIN = ProviderPlugin(
    name="twilio",
    channel_config=TwilioChannelConfig,
    make_translator=TwilioWebhookTranslator.for_channels,
    make_client=lambda channel, session, public_url: TwilioClient.for_channel(
        channel, session, f"{public_url}/webhooks/twilio" if public_url else None
    ),
    check_credentials=check_twilio_credentials,
)
