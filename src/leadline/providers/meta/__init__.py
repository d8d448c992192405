"""Meta WhatsApp Cloud API."""

from leadline.providers.base import ProviderPlugin
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.webhook import MetaWebhookTranslator

PLUGIN = ProviderPlugin(
    name="meta",
    channel_config=MetaChannelConfig,
    make_translator=MetaWebhookTranslator.for_channels,
)
