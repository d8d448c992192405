"""A cheap authenticated call to the Graph API: is this channel's access token good for its number?"""

from __future__ import annotations

import aiohttp
import orjson

from leadline.config import ChannelConfig
from leadline.providers.base import ErrorClass, ProviderError
from leadline.providers.http import get
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.errors import meta_error_from_response


async def check_meta_credentials(channel: ChannelConfig, session: aiohttp.ClientSession) -> str:
    """``GET {graph_base_url}/{phone_number_id}`` with the channel's bearer token.

    Returns what Meta says of the number (its display number and verified name); raises
    :class:`ProviderError` when the token is missing or refused, or Meta cannot be reached.
    """
    if not isinstance(channel, MetaChannelConfig):
        raise TypeError(f"channel {channel.name!r} is not a Meta channel")
    if channel.access_token is None:
        raise ProviderError(
            ErrorClass.CHANNEL_FAILURE, "no_access_token", f"channel {channel.name!r} has no access_token"
        )
    answer = await get(
        session,
        f"{channel.graph_base_url}/{channel.phone_number_id}",
        params={"fields": "display_phone_number,verified_name,quality_rating"},
        headers={"Authorization": f"Bearer {channel.access_token.get_secret_value()}"},
    )
    if not answer.ok:
        raise meta_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
    try:
        data = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return "the number answered"
    parts = [str(data[key]) for key in ("display_phone_number", "verified_name") if data.get(key)]
    if data.get("quality_rating"):
        parts.append(f"quality {data['quality_rating']}")
    return ", ".join(parts) or "the number answered"
