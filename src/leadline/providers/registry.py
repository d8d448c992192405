"""Where providers are found: the built-in ones and any installed under the ``leadline.providers``
entry-point group. Adding a provider is a new folder that exports a :class:`ProviderPlugin`."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from leadline.providers.base import ProviderPlugin


@cache
def _plugins() -> dict[str, ProviderPlugin]:
    from leadline.providers.meta import PLUGIN as META
    from leadline.providers.twilio import PLUGIN as TWILIO

    plugins = {META.name: META, TWILIO.name: TWILIO}
    for entry in entry_points(group="leadline.providers"):
        plugin = entry.load()
        if isinstance(plugin, ProviderPlugin):
            plugins[plugin.name] = plugin
    return plugins


def get_plugin(name: str) -> ProviderPlugin | None:
    return _plugins().get(name)


def plugin_names() -> list[str]:
    return sorted(_plugins())
