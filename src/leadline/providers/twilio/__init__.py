"""Twilio's WhatsApp API."""

from leadline.providers.base import ProviderPlugin
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.webhook import TwilioWebhookTranslator

PLUGIN = ProviderPlugin(
    name="twilio",
    channel_config=TwilioChannelConfig,
    make_translator=TwilioWebhookTranslator.for_channels,
)
