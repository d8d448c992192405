"""Inbound media over real HTTP, on SQLite and PostgreSQL: fetched by a job, stored, served at /v1/media/{id}.

The happy paths run against the provider sandbox (it serves the media it injected: Meta's two-step
download with the bearer token, Twilio's MediaUrl with Basic auth). The hostile ones run against two
small servers of this module: a scripted provider (``meta-second`` and ``twilio-second`` point their
``api_base_url`` at it), which can answer a media lookup with a URL elsewhere or redirect anywhere, and
a target that counts every request it gets; a refused download must not reach it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from helpers import AUTH, LUCIA, message, meta_json, only_lead, post_meta, post_twilio, timeline_of, twilio_fixture
from sqlalchemy import select

from conftest import TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, RunningApp, base_config, running_app
from leadline.config import config_from_mapping
from leadline.pipeline.worker import Worker
from leadline.sandbox.config import SandboxConfig
from leadline.sandbox.server import RunningSandbox, start_sandbox
from leadline.store.jobs import JobState
from leadline.store.tables import jobs

MAX_BYTES = 4096
SECOND_META_NUMBER_ID = "420000000000009"
SECOND_TWILIO_NUMBER = "+15550007777"


# --------------------------------------------------------------------------------------------
# The scripted provider and the forbidden target


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Scripted:
    """Answers per path, in order; the last one repeats. Records every path asked for and its credentials."""

    url: str = ""
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    def on(self, path: str, *answers: Answer) -> None:
        self.answers[path] = list(answers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(request.path)
        self.authorizations.append(request.headers.get("Authorization"))
        queue = self.answers.get(request.path)
        if not queue:
            return web.Response(status=404, text="not scripted")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return await answer(request)


async def _serve(handler: Scripted) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    handler.url = f"http://{host}:{port}"
    return runner


def _json(data: Any, status: int = 200) -> Answer:
    async def answer(_: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")

    return answer


def _bytes(content: bytes, content_type: str) -> Answer:
    async def answer(_: web.Request) -> web.StreamResponse:
        return web.Response(body=content, content_type=content_type)

    return answer


def _redirect(location: str) -> Answer:
    async def answer(_: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": location})

    return answer


async def _endless(request: web.Request) -> web.StreamResponse:
    """Chunked, with no Content-Length: 100 KiB in 1 KiB pieces; a 4 KiB cap hangs up long before the end."""
    response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        for _ in range(100):
            await response.write(b"y" * 1024)
    except ConnectionResetError:
        pass
    return response


# --------------------------------------------------------------------------------------------
# leadline, the sandbox and the scripted servers, wired together


@dataclass
class Stack:
    app: RunningApp
    sandbox: RunningSandbox
    provider: Scripted
    target: Scripted
    http: httpx.AsyncClient
    storage_dir: Path


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    provider, target = Scripted(), Scripted()
    provider_runner, target_runner = await _serve(provider), await _serve(target)
    data = base_config(database_url, media={"storage_dir": str(tmp_path / "media"), "max_bytes": MAX_BYTES})
    data["channels"].append(
        {
            "name": "twilio-second",
            "provider": "twilio",
            "business_number": SECOND_TWILIO_NUMBER,
            "account_sid": TWILIO_ACCOUNT_SID,
            "auth_token": TWILIO_AUTH_TOKEN,
        }
    )
    # The sandbox is started first (leadline's channels point at it); it learns leadline's address below.
    sandbox = await start_sandbox(SandboxConfig.from_leadline(config_from_mapping(data), "http://127.0.0.1:9"))
    api_base_urls = {
        "meta-main": sandbox.meta_api_base_url,
        "twilio-main": sandbox.twilio_api_base_url,
        "meta-second": f"{provider.url}/v25.0",
        "twilio-second": provider.url,
    }
    for channel in data["channels"]:
        channel["api_base_url"] = api_base_urls[channel["name"]]
    try:
        async with running_app(config_from_mapping(data)) as app, httpx.AsyncClient(timeout=10.0) as http:
            sandbox.sandbox.config = dataclasses.replace(sandbox.sandbox.config, leadline_url=app.url)
            yield Stack(app, sandbox, provider, target, http, tmp_path / "media")
    finally:
        await sandbox.close()
        await provider_runner.cleanup()
        await target_runner.cleanup()


async def inject(stack: Stack, provider: str, kind: str, content: bytes, mime_type: str, **media: str) -> str:
    """A customer sends media through the sandbox; returns leadline's id of the recorded message."""
    response = await stack.http.post(
        f"{stack.sandbox.url}/_sandbox/inbound",
        json={
            "provider": provider,
            "from": LUCIA,
            "kind": kind,
            "media": {"mime_type": mime_type, "content_base64": base64.b64encode(content).decode(), **media},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["leadline_status"] == 200, response.json()
    return await message_id_of(stack, response.json()["message_id"])


async def message_id_of(stack: Stack, provider_message_id: str) -> str:
    lead = await only_lead(stack.http, stack.app.url, LUCIA)
    for event in await timeline_of(stack.http, stack.app.url, lead["id"]):
        if event["kind"] == "message_in" and event["data"]["provider_message_id"] == provider_message_id:
            found: str = event["message_id"]
            return found
    raise AssertionError(f"no inbound message {provider_message_id}")


async def media_of(stack: Stack, message_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await message(stack.http, stack.app.url, message_id))["media"]
    return items


async def get_media(stack: Stack, media_id: str) -> httpx.Response:
    return await stack.http.get(f"{stack.app.url}/v1/media/{media_id}", headers=AUTH)


def meta_image_webhook(media_id: str, wamid: str) -> bytes:
    """A Meta image message to ``meta-second`` (whose Graph API is the scripted provider)."""
    message_object = {
        "from": LUCIA.lstrip("+"),
        "id": wamid,
        "timestamp": "1767225610",
        "type": "image",
        "image": {"id": media_id, "mime_type": "image/jpeg"},
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550009999", "phone_number_id": SECOND_META_NUMBER_ID},
        "contacts": [{"profile": {"name": "Lucía Ramos"}, "wa_id": LUCIA.lstrip("+")}],
        "messages": [message_object],
    }
    entry = {"id": "310000000000009", "changes": [{"field": "messages", "value": value}]}
    return meta_json({"object": "whatsapp_business_account", "entry": [entry]})


def twilio_image_form(media_url: str, sid: str, *, to: str = SECOND_TWILIO_NUMBER) -> dict[str, str]:
    params = twilio_fixture("inbound_image")
    for name in ("MessageSid", "SmsMessageSid", "SmsSid"):
        params[name] = sid
    params["To"] = f"whatsapp:{to}"
    params["MediaUrl0"] = media_url
    return params


async def only_media(stack: Stack, message_id: str) -> dict[str, Any]:
    items = await media_of(stack, message_id)
    assert len(items) == 1, items
    return items[0]


# --------------------------------------------------------------------------------------------
# Fetching and serving


CASES = [
    ("meta", "image", "image/jpeg", {}),
    ("meta", "document", "application/pdf", {"filename": "cotizacion.pdf"}),
    ("meta", "audio", "audio/ogg; codecs=opus", {}),
    ("twilio", "image", "image/jpeg", {}),
    ("twilio", "document", "application/pdf", {}),
    ("twilio", "audio", "audio/ogg", {}),
]


@pytest.mark.parametrize(("provider", "kind", "mime_type", "extra"), CASES, ids=[f"{p}-{k}" for p, k, *_ in CASES])
async def test_inbound_media_is_fetched_stored_and_served_with_its_type(
    stack: Stack, provider: str, kind: str, mime_type: str, extra: dict[str, str]
) -> None:
    content = f"{provider} {kind} ".encode() + bytes(range(256)) * 3
    message_id = await inject(stack, provider, kind, content, mime_type, **extra)

    pending = await only_media(stack, message_id)
    assert pending["state"] == "pending"
    not_ready = await get_media(stack, pending["id"])
    assert not_ready.status_code == 409
    assert not_ready.json()["error"]["code"] == "media_not_ready"

    await stack.app.drain_jobs()

    stored = await only_media(stack, message_id)
    assert stored["state"] == "stored", stored
    assert stored["size"] == len(content)
    served = await get_media(stack, pending["id"])
    assert served.status_code == 200
    assert served.content == content
    assert served.headers["content-type"].split(";")[0] == mime_type.split(";")[0]
    assert served.headers["x-content-type-options"] == "nosniff"
    if "filename" in extra:
        assert extra["filename"] in served.headers["content-disposition"]
    # Stored once, under its hash, and nothing left behind in staging.
    digest = hashlib.sha256(content).hexdigest()
    assert (stack.storage_dir / "sha256" / digest[:2] / digest).read_bytes() == content
    assert list((stack.storage_dir / "staging").iterdir()) == []


async def test_the_same_webhook_twice_fetches_its_media_once(stack: Stack) -> None:
    response = await stack.http.post(
        f"{stack.sandbox.url}/_sandbox/inbound",
        json={"provider": "twilio", "from": LUCIA, "kind": "image", "repeat": 3},
    )
    assert response.json()["leadline_statuses"] == [200, 200, 200]
    message_id = await message_id_of(stack, response.json()["message_id"])

    await stack.app.drain_jobs()

    assert (await only_media(stack, message_id))["state"] == "stored"
    downloads = await stack.http.get(f"{stack.sandbox.url}/_sandbox/requests", params={"provider": "twilio"})
    assert [r["method"] for r in downloads.json()["requests"] if "/Media/" in r["path"]] == ["GET"]


async def test_unknown_media_is_404(stack: Stack) -> None:
    response = await get_media(stack, "med_doesnotexist")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "media_not_found"


async def test_media_needs_an_api_key(stack: Stack) -> None:
    response = await stack.http.get(f"{stack.app.url}/v1/media/med_anything")
    assert response.status_code == 401


# --------------------------------------------------------------------------------------------
# Only the provider's hosts


async def assert_refused(stack: Stack, message_id: str, reason: str) -> None:
    item = await only_media(stack, message_id)
    assert item["state"] == "failed", item
    assert item["error"].startswith(f"{reason}:"), item
    gone = await get_media(stack, item["id"])
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "media_failed"
    assert gone.json()["error"]["message"].startswith(f"{reason}:")


@pytest.mark.parametrize(
    "where",
    ["{target}/secret", "http://169.254.169.254/latest/meta-data/iam/", "http://localhost:5432/", "file:///etc/passwd"],
)
async def test_a_crafted_twilio_media_url_off_the_provider_hosts_is_never_fetched(stack: Stack, where: str) -> None:
    url = where.format(target=stack.target.url)
    response = await post_twilio(stack.http, stack.app.url, twilio_image_form(url, "MM" + "a" * 32, to="+15550001234"))
    assert response.status_code == 200
    message_id = await message_id_of(stack, "MM" + "a" * 32)

    await stack.app.drain_jobs()

    await assert_refused(stack, message_id, "host_not_allowed")
    assert stack.target.asked == []


async def test_an_unusable_content_type_does_not_stop_the_message_from_being_recorded(stack: Stack) -> None:
    sid = "MM" + "d" * 32
    params = twilio_image_form(f"{stack.target.url}/x", sid)
    params["MediaContentType0"] = "image/" + "x" * 300  # longer than the column; PostgreSQL would refuse it
    response = await post_twilio(stack.http, stack.app.url, params)

    assert response.status_code == 200
    item = await only_media(stack, await message_id_of(stack, sid))
    assert (item["state"], item["mime_type"]) == ("pending", None)


async def test_a_meta_media_lookup_pointing_off_the_provider_hosts_is_never_fetched(stack: Stack) -> None:
    stack.provider.on("/v25.0/777", _json({"url": f"{stack.target.url}/steal", "mime_type": "image/jpeg"}))
    response = await post_meta(stack.http, stack.app.url, meta_image_webhook("777", "wamid.EVIL1"))
    assert response.status_code == 200
    message_id = await message_id_of(stack, "wamid.EVIL1")

    await stack.app.drain_jobs()

    await assert_refused(stack, message_id, "host_not_allowed")
    assert stack.provider.asked == ["/v25.0/777"]
    assert stack.target.asked == []


async def test_a_redirect_off_the_provider_hosts_is_not_followed(stack: Stack) -> None:
    stack.provider.on("/media/ME1", _redirect(f"{stack.target.url}/internal"))
    sid = "MM" + "b" * 32
    await post_twilio(stack.http, stack.app.url, twilio_image_form(f"{stack.provider.url}/media/ME1", sid))
    message_id = await message_id_of(stack, sid)

    await stack.app.drain_jobs()

    await assert_refused(stack, message_id, "host_not_allowed")
    assert stack.provider.asked == ["/media/ME1"]
    assert stack.target.asked == []


async def test_redirects_within_the_provider_hosts_are_followed_and_credentials_stay_on_the_first_origin(
    stack: Stack,
) -> None:
    content = b"\x89PNG redirected bytes"
    stack.provider.on("/media/ME2", _redirect("/cdn/ME2?signature=abc"))
    stack.provider.on("/cdn/ME2", _bytes(content, "image/png"))
    sid = "MM" + "c" * 32
    await post_twilio(stack.http, stack.app.url, twilio_image_form(f"{stack.provider.url}/media/ME2", sid))
    message_id = await message_id_of(stack, sid)

    await stack.app.drain_jobs()

    item = await only_media(stack, message_id)
    assert item["state"] == "stored", item
    assert (await get_media(stack, item["id"])).content == content
    assert stack.provider.asked == ["/media/ME2", "/cdn/ME2"]
    assert all(a is not None and a.startswith("Basic ") for a in stack.provider.authorizations)


# --------------------------------------------------------------------------------------------
# The size cap and transient failures


@pytest.mark.parametrize("provider", ["meta", "twilio"])
async def test_media_over_the_size_cap_fails_too_large(stack: Stack, provider: str) -> None:
    message_id = await inject(stack, provider, "image", b"x" * (MAX_BYTES + 1), "image/jpeg")

    await stack.app.drain_jobs()

    await assert_refused(stack, message_id, "too_large")
    assert list((stack.storage_dir / "staging").iterdir()) == []


async def test_a_body_that_grows_past_the_cap_without_a_content_length_is_cut_off(stack: Stack) -> None:
    stack.provider.on("/v25.0/888", _json({"url": f"{stack.provider.url}/stream/888"}))
    stack.provider.on("/stream/888", _endless)
    await post_meta(stack.http, stack.app.url, meta_image_webhook("888", "wamid.BIG1"))
    message_id = await message_id_of(stack, "wamid.BIG1")

    await stack.app.drain_jobs()

    await assert_refused(stack, message_id, "too_large")
    assert stack.provider.asked == ["/v25.0/888", "/stream/888"]


async def test_a_transient_provider_error_is_retried_and_then_the_media_is_stored(stack: Stack) -> None:
    content = b"fetched on the second try"
    stack.provider.on(
        "/v25.0/999",
        _json({"error": {"message": "Service temporarily unavailable", "code": 2}}, status=503),
        _json({"url": f"{stack.provider.url}/cdn/999", "mime_type": "image/jpeg"}),
    )
    stack.provider.on("/cdn/999", _bytes(content, "image/jpeg"))
    await post_meta(stack.http, stack.app.url, meta_image_webhook("999", "wamid.FLAKY1"))
    message_id = await message_id_of(stack, "wamid.FLAKY1")

    await stack.app.drain_jobs()

    assert (await only_media(stack, message_id))["state"] == "pending"
    async with stack.app.services.db.read() as conn:
        job = (await conn.execute(select(jobs).where(jobs.c.kind == "fetch_media"))).one()
    assert (job.state, job.attempts) == (JobState.PENDING.value, 1)
    assert "2: Service temporarily unavailable" in job.last_error

    # A worker whose clock is past the backoff runs the retry now; nothing sleeps.
    services = stack.app.services
    later = Worker(
        services.db, services.job_handlers, services.config.settings.worker, clock=lambda: job.run_after + timedelta(1)
    )
    assert await later.run_until_idle() == 1

    item = await only_media(stack, message_id)
    assert item["state"] == "stored", item
    assert (await get_media(stack, item["id"])).content == content
    assert stack.provider.asked == ["/v25.0/999", "/v25.0/999", "/cdn/999"]


async def test_media_the_provider_no_longer_has_fails_without_retrying(stack: Stack) -> None:
    stack.provider.on("/v25.0/404", _json({"url": f"{stack.provider.url}/cdn/404"}))
    await post_meta(stack.http, stack.app.url, meta_image_webhook("404", "wamid.GONE1"))
    message_id = await message_id_of(stack, "wamid.GONE1")

    await stack.app.drain_jobs()

    await assert_refused(stack, message_id, "media_not_found")
