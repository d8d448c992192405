"""Meta WhatsApp Cloud API."""

from leadline.providers.base import ProviderPlugin
from leadline.providers.meta.account import check_meta_credentials
from leadline.providers.meta.client import MetaClient
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.webhook import MetaWebhookTranslator

PLUGIN = ProviderPlugin(
    name="meta",
    channel_config=MetaChannelConfig,
    make_translator=MetaWebhookTranslator.for_channels,
    # Meta reports statuses to the app's one subscribed webhook URL, so the public URL is not needed.
    make_client=lambda channel, session, _public_url: MetaClient.for_channel(channel, session),
    check_credentials=check_meta_credentials,
)
