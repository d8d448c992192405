"""A cheap authenticated call to Twilio's REST API: are this channel's account SID and auth token good?"""

from __future__ import annotations

import aiohttp
import orjson

from leadline.config import ChannelConfig
from leadline.providers.http import get
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.errors import twilio_error_from_response


async def check_twilio_credentials(channel: ChannelConfig, session: aiohttp.ClientSession) -> str:
    """``GET {messages_base_url}/2010-04-01/Accounts/{AccountSid}.json`` with HTTP Basic auth.

    Returns the account's friendly name and status; raises :class:`ProviderError` when the
    credentials are refused or Twilio cannot be reached.
    """
    if not isinstance(channel, TwilioChannelConfig):
        raise TypeError(f"channel {channel.name!r} is not a Twilio channel")
    answer = await get(
        session,
        f"{channel.messages_base_url}/2010-04-01/Accounts/{channel.account_sid}.json",
        headers={
            "Authorization": aiohttp.encode_basic_auth(channel.account_sid, channel.auth_token.get_secret_value())
        },
    )
    if not answer.ok:
        raise twilio_error_from_response(answer.status, answer.body, retry_after=answer.retry_after)
    try:
        data = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return "the account answered"
    parts = [str(data[key]) for key in ("friendly_name", "status") if data.get(key)]
    return ", ".join(parts) or "the account answered"
