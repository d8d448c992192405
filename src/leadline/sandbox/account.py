"""The providers' account endpoints, for live credential checks (what ``leadline cutover plan`` calls).

- ``GET /meta/{version}/{phone_number_id}``: the phone number, for its bearer token (Graph error 190
  with a wrong one). Registered before Meta's media route, which has the same shape.
- ``GET /twilio/2010-04-01/Accounts/{AccountSid}.json``: the account, for HTTP Basic auth with its
  auth token (Twilio error 20003 with a wrong one).

Faults do not meet these endpoints: they are about sending.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re

from aiohttp import web

from leadline.sandbox.core import Sandbox
from leadline.sandbox.meta import ERRORS as META_ERRORS
from leadline.sandbox.meta import graph_error_response
from leadline.sandbox.twilio import API_VERSION, twilio_error_response


class AccountFake:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._meta = {c.phone_number_id: c for c in sandbox.config.meta}
        self._twilio = {c.account_sid: c for c in sandbox.config.twilio}

    def add_routes(self, app: web.Application) -> None:
        if self._meta:
            numbers = "|".join(re.escape(number) for number in self._meta)
            app.router.add_get(rf"/meta/{{version:v\d+\.\d+}}/{{phone_number_id:(?:{numbers})}}", self.meta_number)
        app.router.add_get(f"/twilio/{API_VERSION}/Accounts/{{account_sid}}.json", self.twilio_account)

    async def meta_number(self, request: web.Request) -> web.Response:
        self._sandbox.record("meta", request, b"")
        channel = self._meta[request.match_info["phone_number_id"]]
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if (
            channel.access_token is None
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(given.strip().encode(), channel.access_token.encode())
        ):
            return graph_error_response(401, 190, META_ERRORS[190][0], details=META_ERRORS[190][1])
        return web.json_response(
            {
                "display_phone_number": channel.business_number,
                "verified_name": f"Sandbox {channel.name}",
                "quality_rating": "GREEN",
                "code_verification_status": "VERIFIED",
                "id": channel.phone_number_id,
            }
        )

    async def twilio_account(self, request: web.Request) -> web.Response:
        self._sandbox.record("twilio", request, b"")
        sid = request.match_info["account_sid"]
        channel = self._twilio.get(sid)
        credentials = _basic_credentials(request)
        if (
            channel is None
            or credentials is None
            or credentials[0] != sid
            or not hmac.compare_digest(credentials[1].encode(), channel.auth_token.encode())
        ):
            return twilio_error_response(401, 20003, headers={"WWW-Authenticate": 'Basic realm="Twilio API"'})
        return web.json_response(
            {
                "sid": sid,
                "friendly_name": f"Sandbox {channel.name}",
                "status": "active",
                "type": "Full",
                "uri": f"/{API_VERSION}/Accounts/{sid}.json",
            }
        )


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None
