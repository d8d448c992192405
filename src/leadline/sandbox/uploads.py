"""Meta's Resumable Upload API in the sandbox: where template media examples get their handles.

Routes, relative to the sandbox root (Meta's "Upload a file" guide):

- ``POST /meta/{version}/{app_id}/uploads?file_name=&file_length=&file_type=`` with a channel's
  access token (``Authorization: Bearer|OAuth <token>`` or ``access_token=``): answers
  ``{"id": "upload:<session>"}``.
- ``POST /meta/{version}/upload:<session>`` with ``Authorization: OAuth <token>`` (the same token),
  ``file_offset: 0`` and the whole file as the body: answers ``{"h": "4::<base64>"}``, the handle
  being ``4::`` and the base64 of ``<file_type>:<sha256 of the bytes>``, so a test can tell which
  bytes it stands for.

Refusals are Graph errors: 401 (code 190) for a missing or unknown token, 400 (code 100) for a
missing parameter, a file type Meta does not take, an offset other than 0 or a body of another length
than declared, 404 (code 100) for an unknown session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
from dataclasses import dataclass

from aiohttp import web

from leadline.sandbox.core import Sandbox
from leadline.sandbox.meta import graph_error_response

FILE_TYPES = frozenset({"application/pdf", "image/jpeg", "image/jpg", "image/png", "video/mp4"})
"""What the Resumable Upload API takes."""


@dataclass(slots=True)
class UploadSession:
    id: str
    app_id: str
    file_name: str
    file_length: int
    file_type: str
    token: str
    handle: str | None = None


def example_handle(file_type: str, content: bytes) -> str:
    """The handle the sandbox answers for ``content`` uploaded as ``file_type``."""
    digest = hashlib.sha256(content).hexdigest()
    return "4::" + base64.b64encode(f"{file_type}:{digest}".encode()).decode()


class UploadsFake:
    """The two calls of Meta's Resumable Upload API."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self.sessions: dict[str, UploadSession] = {}
        self._ids = itertools.count(1)

    def add_routes(self, app: web.Application) -> None:
        version = r"{version:v\d+\.\d+}"
        app.router.add_post(f"/meta/{version}/{{session_id:upload:[^/]+}}", self.upload)
        app.router.add_post(f"/meta/{version}/{{app_id:[0-9]+}}/uploads", self.start)

    def _token(self, request: web.Request, schemes: tuple[str, ...]) -> str | None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        token = given.strip() if scheme.lower() in schemes else request.query.get("access_token", "")
        known = any(
            c.access_token and hmac.compare_digest(token.encode(), c.access_token.encode())
            for c in self._sandbox.config.meta
        )
        return token if token and known else None

    async def start(self, request: web.Request) -> web.Response:
        self._sandbox.record("meta", request, await request.read())
        token = self._token(request, ("bearer", "oauth"))
        if token is None:
            return graph_error_response(401, 190, "Invalid OAuth access token - Cannot parse access token")
        query = request.query
        for key in ("file_name", "file_length", "file_type"):
            if not query.get(key):
                return graph_error_response(400, 100, f"The parameter {key} is required.")
        try:
            file_length = int(query["file_length"])
        except ValueError:
            file_length = 0
        if file_length <= 0:
            return graph_error_response(
                400, 100, "Invalid parameter", details="file_length must be a positive integer."
            )
        if query["file_type"] not in FILE_TYPES:
            return graph_error_response(
                400, 100, "Invalid parameter", details=f"file_type {query['file_type']} is not supported."
            )
        session_id = f"upload:sbx{next(self._ids)}"
        self.sessions[session_id] = UploadSession(
            session_id, request.match_info["app_id"], query["file_name"], file_length, query["file_type"], token
        )
        return web.json_response({"id": session_id})

    async def upload(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._sandbox.record("meta", request, body)
        session = self.sessions.get(request.match_info["session_id"])
        token = self._token(request, ("oauth",))
        if token is None or (session is not None and not hmac.compare_digest(token, session.token)):
            return graph_error_response(401, 190, "Invalid OAuth access token - Cannot parse access token")
        if session is None:
            return graph_error_response(404, 100, "Invalid parameter", details="Unknown upload session.")
        if request.headers.get("file_offset") != "0":
            return graph_error_response(400, 100, "Invalid parameter", details="file_offset must be 0.")
        if len(body) != session.file_length:
            return graph_error_response(
                400,
                100,
                "Invalid parameter",
                details=f"The body holds {len(body)} bytes; the session declared {session.file_length}.",
            )
        session.handle = example_handle(session.file_type, body)
        return web.json_response({"h": session.handle})
