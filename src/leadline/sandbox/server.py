"""The provider sandbox: one aiohttp application that impersonates Meta's Cloud API and Twilio.

Point a channel's ``api_base_url`` at it (``http://HOST:PORT/meta/v25.0`` for Meta,
``http://HOST:PORT/twilio`` for Twilio) and leadline sends to it as it would to the provider; the
sandbox answers in the provider's wire format and calls leadline back with signed webhooks.

Control API (JSON), under ``/_sandbox``:

- ``GET /requests[?provider=meta|twilio]``, ``DELETE /requests``: what the fake providers received.
- ``POST /inbound``: a customer message (``provider``, ``from``, ``name``, ``text``, ``kind``,
  ``media``, ``button``, ``location``, ``reply_to``, ``channel``, ``message_id``, ``repeat``) sent to
  leadline as a signed webhook; answers leadline's status and the provider message id.
- ``POST /faults`` (``provider``, ``mode``: ``error``/``throttle``/``timeout``/``down``/``async_error``,
  ``code``, ``http_status``, ``count``, ``retry_after``, ``seconds``), ``GET /faults``,
  ``DELETE /faults[?provider=]``. Faults meet the send endpoints only, never media downloads.
- ``GET /statuses`` (mode and pending callbacks), ``POST /statuses/mode`` (``mode``, ``delay``; callbacks
  already pending stay so until flushed), ``POST /statuses/flush[?message_id=]``: deliver the pending
  status callbacks now; answers ``delivered`` (leadline answered 2xx), ``attempted`` and each outcome.
- ``GET /callbacks``, ``DELETE /callbacks``: the webhooks delivered to leadline and its answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from leadline.sandbox.account import AccountFake
from leadline.sandbox.config import SandboxConfig
from leadline.sandbox.core import FaultSpec, InboundSpec, Provider, Sandbox, StatusModeSpec
from leadline.sandbox.meta import MetaFake
from leadline.sandbox.templates import TemplatesFake
from leadline.sandbox.twilio import TwilioFake
from leadline.sandbox.uploads import UploadsFake

log = logging.getLogger(__name__)

SANDBOX_KEY = web.AppKey("sandbox", Sandbox)
M = TypeVar("M", bound=BaseModel)
_PROVIDERS: tuple[Provider, ...] = ("meta", "twilio")


def build_sandbox_app(config: SandboxConfig) -> web.Application:
    """The sandbox application; its state lives in ``app[SANDBOX_KEY]`` for as long as the app runs."""
    sandbox = Sandbox(config)
    app = web.Application()
    app[SANDBOX_KEY] = sandbox
    AccountFake(sandbox).add_routes(app)  # first: Meta's GET /{phone_number_id} has the media route's shape
    UploadsFake(sandbox).add_routes(app)  # before any Meta /{id} route: POST /upload:<session> has that shape
    for fake in (MetaFake(sandbox), TwilioFake(sandbox)):
        sandbox.fakes[fake.name] = fake
        fake.add_routes(app)
    _Control(sandbox).add_routes(app)
    TemplatesFake(sandbox).add_routes(app)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await sandbox.start()
        yield
        await sandbox.close()

    async def release(_: web.Application) -> None:
        await sandbox.release_requests()

    app.cleanup_ctx.append(lifecycle)
    # on_shutdown runs before the server waits for open requests: held ones must let go first.
    app.on_shutdown.append(release)
    return app


@dataclass(slots=True)
class RunningSandbox:
    """A sandbox serving on a port, started by :func:`start_sandbox`."""

    runner: web.AppRunner
    url: str
    """``http://HOST:PORT`` of the sandbox."""

    @property
    def sandbox(self) -> Sandbox:
        return self.runner.app[SANDBOX_KEY]

    @property
    def meta_api_base_url(self) -> str:
        return f"{self.url}/meta/v25.0"

    @property
    def twilio_api_base_url(self) -> str:
        return f"{self.url}/twilio"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_sandbox(config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> RunningSandbox:
    """Serve the sandbox in this event loop (``port=0``: any free port; see ``.url``). Close it when done."""
    runner = web.AppRunner(build_sandbox_app(config), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    address = runner.addresses[0]
    bound_host, bound_port = address[0], address[1]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    return RunningSandbox(runner, f"http://{url_host}:{bound_port}")


async def run_sandbox(config: SandboxConfig, host: str, port: int) -> None:
    """Serve the sandbox until cancelled (what ``leadline sandbox`` runs)."""
    running = await start_sandbox(config, host, port)
    log.info(
        "sandbox listening on %s (Meta api_base_url %s, Twilio api_base_url %s), webhooks to %s",
        running.url,
        running.meta_api_base_url,
        running.twilio_api_base_url,
        config.webhook_base_url,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await running.close()


# --------------------------------------------------------------------------------------------
# Control API


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _problem(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status=status)


async def _parse(request: web.Request, model: type[M]) -> M | web.Response:
    try:
        data = await request.json()
    except ValueError:
        return _problem(400, "the body must be JSON")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return _problem(400, "invalid request", details=exc.errors(include_url=False, include_context=False))


def _provider_param(request: web.Request) -> Provider | web.Response | None:
    value = request.query.get("provider")
    if value is None:
        return None
    if value not in _PROVIDERS:
        return _problem(400, f"unknown provider {value!r}")
    return value


class _Control:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/_sandbox/requests", self.list_requests)
        app.router.add_delete("/_sandbox/requests", self.clear_requests)
        app.router.add_post("/_sandbox/inbound", self.inbound)
        app.router.add_get("/_sandbox/faults", self.list_faults)
        app.router.add_post("/_sandbox/faults", self.set_fault)
        app.router.add_delete("/_sandbox/faults", self.clear_faults)
        app.router.add_get("/_sandbox/statuses", self.statuses)
        app.router.add_post("/_sandbox/statuses/mode", self.set_status_mode)
        app.router.add_post("/_sandbox/statuses/flush", self.flush)
        app.router.add_get("/_sandbox/callbacks", self.list_callbacks)
        app.router.add_delete("/_sandbox/callbacks", self.clear_callbacks)

    async def list_requests(self, request: web.Request) -> web.Response:
        provider = _provider_param(request)
        if isinstance(provider, web.Response):
            return provider
        recorded = [r.to_json() for r in self._sandbox.requests if provider is None or r.provider == provider]
        return _json({"requests": recorded})

    async def clear_requests(self, request: web.Request) -> web.Response:
        count = len(self._sandbox.requests)
        self._sandbox.requests.clear()
        return _json({"cleared": count})

    async def inbound(self, request: web.Request) -> web.Response:
        spec = await _parse(request, InboundSpec)
        if isinstance(spec, web.Response):
            return spec
        sandbox_url = (self._sandbox.config.sandbox_url or str(request.url.origin())).rstrip("/")
        try:
            injected = self._sandbox.fakes[spec.provider].inbound_webhook(spec, sandbox_url)
        except LookupError as exc:
            return _problem(404, str(exc))
        deliveries = [await self._sandbox.deliver(injected.webhook) for _ in range(spec.repeat)]
        last = deliveries[-1]
        return _json(
            {
                "provider": spec.provider,
                "channel": injected.channel,
                "message_id": injected.message_id,
                "media": injected.media,
                "leadline_status": last.http_status,
                "leadline_body": last.response_body,
                "leadline_statuses": [d.http_status for d in deliveries],
                "error": last.error,
            },
            # The injection itself worked; 502 only when leadline could not be reached at all.
            status=502 if last.http_status is None else 200,
        )

    async def list_faults(self, request: web.Request) -> web.Response:
        return _json({"faults": {provider: fault.to_json() for provider, fault in self._sandbox.faults.items()}})

    async def set_fault(self, request: web.Request) -> web.Response:
        spec = await _parse(request, FaultSpec)
        if isinstance(spec, web.Response):
            return spec
        fault = self._sandbox.set_fault(spec)
        return _json({"provider": spec.provider, "fault": fault.to_json()})

    async def clear_faults(self, request: web.Request) -> web.Response:
        provider = _provider_param(request)
        if isinstance(provider, web.Response):
            return provider
        cleared = [p for p in list(self._sandbox.faults) if provider is None or p == provider]
        for p in cleared:
            del self._sandbox.faults[p]
        return _json({"cleared": cleared})

    async def statuses(self, request: web.Request) -> web.Response:
        return _json(
            {
                "mode": self._sandbox.status_mode,
                "delay": self._sandbox.status_delay,
                "pending": [p.to_json() for p in self._sandbox.pending],
            }
        )

    async def set_status_mode(self, request: web.Request) -> web.Response:
        spec = await _parse(request, StatusModeSpec)
        if isinstance(spec, web.Response):
            return spec
        self._sandbox.status_mode = spec.mode
        if spec.delay is not None:
            self._sandbox.status_delay = spec.delay
        return _json({"mode": self._sandbox.status_mode, "delay": self._sandbox.status_delay})

    async def flush(self, request: web.Request) -> web.Response:
        deliveries = await self._sandbox.flush(request.query.get("message_id"))
        return _json(
            {
                "delivered": sum(1 for d in deliveries if d.ok),
                "attempted": len(deliveries),
                "deliveries": [
                    {
                        "provider": d.provider,
                        "message_id": d.message_id,
                        "status": d.status,
                        "url": d.url,
                        "http_status": d.http_status,
                        "error": d.error,
                    }
                    for d in deliveries
                ],
            }
        )

    async def list_callbacks(self, request: web.Request) -> web.Response:
        provider = _provider_param(request)
        if isinstance(provider, web.Response):
            return provider
        return _json(
            {"callbacks": [d.to_json() for d in self._sandbox.deliveries if provider is None or d.provider == provider]}
        )

    async def clear_callbacks(self, request: web.Request) -> web.Response:
        count = len(self._sandbox.deliveries)
        self._sandbox.deliveries.clear()
        return _json({"cleared": count})
