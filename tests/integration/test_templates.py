"""The template library against the provider sandbox over real HTTP, on SQLite and PostgreSQL.

The sandbox runs in-process on an ephemeral port with automatic decisions off: a test decides a
submission with ``POST /_sandbox/templates/decide`` when it wants to, so nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import orjson
import pytest
from aiohttp import web

from conftest import API_KEY, TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, base_config, running_app
from leadline.bootstrap import build_services
from leadline.config import LeadlineConfig, config_from_mapping
from leadline.pipeline.worker import Worker
from leadline.providers.meta.client import template_object
from leadline.providers.twilio.client import content_variables
from leadline.sandbox.config import SandboxConfig
from leadline.sandbox.server import RunningSandbox, start_sandbox
from leadline.sandbox.uploads import example_handle
from leadline.store import jobs as job_store
from leadline.store.db import Database
from leadline.templates import store
from leadline.templates.definitions import SourcedDefinition, TemplateDefinition
from leadline.templates.errors import InvalidTemplateVariables, TemplateNotApproved, TemplateNotFound
from leadline.templates.service import channels_with_approved, prepare_template_send
from leadline.templates.sync import (
    DEFAULT_SYNC_INTERVAL,
    TEMPLATE_SYNC_JOB,
    define_templates,
    submit_templates,
    sync_channel,
)

ORDER_UPDATE: dict[str, Any] = {
    "name": "order_update",
    "language": "es_MX",
    "category": "UTILITY",
    "body": {"text": "Hola {{1}}, tu pedido {{2}} va en camino.", "examples": ["Lucía", "8812"]},
    "footer": "Tienda Ejemplo",
    "buttons": [
        {"type": "quick_reply", "text": "Cambiar cita"},
        {"type": "url", "text": "Rastrear", "url": "https://shop.example/t/{{1}}", "example": "8812"},
    ],
}


def definition(**changes: Any) -> TemplateDefinition:
    return TemplateDefinition.model_validate({**ORDER_UPDATE, **changes})


@dataclasses.dataclass
class World:
    config: LeadlineConfig
    db: Database
    sandbox: RunningSandbox
    http: aiohttp.ClientSession

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, f"{self.sandbox.url}{path}", json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def provider_templates(self, provider: str) -> list[dict[str, Any]]:
        return (await self.control("GET", f"/_sandbox/templates?provider={provider}"))["templates"]

    async def decide(self, **spec: Any) -> list[dict[str, Any]]:
        return (await self.control("POST", "/_sandbox/templates/decide", spec))["decided"]

    async def define(self, *definitions: TemplateDefinition) -> None:
        await define_templates(self.db, [SourcedDefinition(d, "test") for d in definitions])

    async def state(self, name: str, language: str, channel: str) -> store.ChannelState | None:
        async with self.db.read() as conn:
            template = await store.get_template(conn, name, language)
        return template.channels.get(channel) if template else None


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    plain = config_from_mapping(base_config(database_url))
    # Webhooks go nowhere until a test starts leadline's app and points the sandbox at it.
    sandbox = await start_sandbox(SandboxConfig.from_leadline(plain, "http://127.0.0.1:9"))
    data = base_config(database_url)
    for channel in data["channels"]:
        if channel["provider"] == "meta":
            channel["api_base_url"] = sandbox.meta_api_base_url
        else:
            channel["api_base_url"] = sandbox.twilio_api_base_url
            channel["content_api_base_url"] = sandbox.twilio_api_base_url
    config = config_from_mapping(data)
    db = Database(database_url)
    http = aiohttp.ClientSession()
    world = World(config, db, sandbox, http)
    await world.control("POST", "/_sandbox/templates/settings", {"delay": None})
    try:
        yield world
    finally:
        await http.close()
        await db.close()
        await sandbox.close()


# --------------------------------------------------------------------------------------------
# Submit


@pytest.mark.parametrize("channel", ["meta-main", "twilio-main"])
async def test_submitting_twice_creates_one_template_on_the_provider(world: World, channel: str) -> None:
    await world.define(definition())
    target = world.config.channel(channel)

    first = await submit_templates(world.db, target)
    second = await submit_templates(world.db, target)

    assert [(o.created, o.error) for o in first] == [(True, None)]
    assert [(o.created, o.adopted, o.error) for o in second] == [(False, True, None)]
    assert first[0].provider_template_id == second[0].provider_template_id
    on_provider = await world.provider_templates(target.provider)
    assert [(t["name"], t["language"], t["status"].upper()) for t in on_provider] == [
        ("order_update", "es_MX", "PENDING")
    ]
    state = await world.state("order_update", "es_MX", channel)
    assert state is not None
    assert (state.status, state.provider_template_id) == ("PENDING", first[0].provider_template_id)


async def test_meta_template_already_in_the_waba_is_adopted(world: World) -> None:
    channel = world.config.channel("meta-main")
    async with world.http.post(
        f"{world.sandbox.meta_api_base_url}/310000000000001/message_templates",
        headers={"Authorization": "Bearer meta-access-token"},
        json={
            "name": "order_update",
            "language": "es_MX",
            "category": "UTILITY",
            "components": [{"type": "BODY", "text": "Hola {{1}}, tu pedido {{2}} va en camino."}],
        },
    ) as response:
        existing_id = (await response.json())["id"]
    await world.decide(provider="meta", status="APPROVED")
    await world.define(definition())

    [outcome] = await submit_templates(world.db, channel)

    assert (outcome.created, outcome.adopted, outcome.provider_template_id) == (False, True, existing_id)
    assert outcome.status == "APPROVED"
    assert len(await world.provider_templates("meta")) == 1


async def test_twilio_content_already_in_the_account_is_adopted(world: World) -> None:
    auth = {"Authorization": aiohttp.encode_basic_auth(TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)}
    async with world.http.post(
        f"{world.sandbox.twilio_api_base_url}/v1/Content",
        headers=auth,
        json={"friendly_name": "order_update", "language": "es_MX", "types": {"twilio/text": {"body": "Hola {{1}}"}}},
    ) as response:
        sid = (await response.json())["sid"]
    await world.define(definition())

    [outcome] = await submit_templates(world.db, world.config.channel("twilio-main"))

    assert (outcome.created, outcome.provider_template_id, outcome.status) == (False, sid, "PENDING")
    [content] = await world.provider_templates("twilio")
    assert (content["id"], content["status"], content["category"]) == (sid, "pending", "UTILITY")


async def test_submission_failure_is_reported_per_template(world: World) -> None:
    media = definition(name="with_media", header={"type": "image", "url": "https://cdn.example/box.jpg"})
    await world.define(definition(), media)

    outcomes = await submit_templates(world.db, world.config.channel("meta-main"))

    by_name = {o.template: o for o in outcomes}
    assert by_name["order_update (es_MX)"].error is None
    assert (by_name["with_media (es_MX)"].error or "").startswith("missing_media_handle")


# --------------------------------------------------------------------------------------------
# Sync and import


async def test_sync_pulls_statuses_and_imports_templates_leadline_did_not_have(world: World) -> None:
    meta = world.config.channel("meta-main")
    await world.define(definition(), definition(name="reject_promo", category="MARKETING"))
    await submit_templates(world.db, meta)
    await world.decide(provider="meta")
    async with world.http.post(
        f"{world.sandbox.meta_api_base_url}/310000000000001/message_templates",
        headers={"Authorization": "Bearer meta-access-token"},
        json={
            "name": "made_by_hand",
            "language": "en_US",
            "category": "UTILITY",
            "components": [
                {"type": "BODY", "text": "Hi {{1}}, see you soon.", "example": {"body_text": [["Ana"]]}},
                {"type": "FOOTER", "text": "Clinic"},
            ],
        },
    ):
        pass

    report = await sync_channel(world.db, meta)

    assert report.imported == ["made_by_hand (en_US)"]
    assert report.updated == 3
    approved = await world.state("order_update", "es_MX", "meta-main")
    rejected = await world.state("reject_promo", "es_MX", "meta-main")
    imported = await world.state("made_by_hand", "en_US", "meta-main")
    assert approved is not None and approved.status == "APPROVED"
    assert rejected is not None and (rejected.status, rejected.rejection_reason) == ("REJECTED", "INVALID_FORMAT")
    assert imported is not None and imported.status == "PENDING"
    async with world.db.read() as conn:
        template = await store.get_template(conn, "made_by_hand", "en_US")
    assert template is not None
    assert template.source == "import:meta-main"
    assert template.definition.body.examples == {"1": "Ana"}
    assert template.definition.footer == "Clinic"


async def test_twilio_sync_follows_the_approval_request(world: World) -> None:
    twilio = world.config.channel("twilio-main")
    await world.define(definition())
    await submit_templates(world.db, twilio)
    assert await channels_with_approved_now(world) == set()

    await world.decide(provider="twilio")
    report = await sync_channel(world.db, twilio)

    assert (report.updated, report.imported) == (1, [])
    assert await channels_with_approved_now(world) == {"twilio-main"}


async def channels_with_approved_now(world: World) -> set[str]:
    async with world.db.read() as conn:
        return await channels_with_approved(conn, "order_update", "es_MX")


async def test_the_worker_syncs_periodically_once_templates_are_submitted(world: World) -> None:
    services = build_services(world.config)
    try:
        await world.define(definition())
        await submit_templates(world.db, world.config.channel("meta-main"))
        await world.decide(provider="meta", status="PAUSED")
        # Just into the next sync window: the job the submission scheduled is due.
        later = datetime.fromtimestamp(
            (math.floor(time.time() / DEFAULT_SYNC_INTERVAL) + 1) * DEFAULT_SYNC_INTERVAL + 1, UTC
        )
        worker = Worker(services.db, services.job_handlers, world.config.settings.worker, clock=lambda: later)

        assert await worker.run_until_idle() == 1

        state = await world.state("order_update", "es_MX", "meta-main")
        assert state is not None and state.status == "PAUSED"
        async with world.db.read() as conn:
            pending = [j for j in await job_store.list_jobs(conn) if j["kind"] == TEMPLATE_SYNC_JOB]
        # The run scheduled the next one.
        assert [j["state"] for j in pending] == ["pending", "done"]
    finally:
        await services.close()


# --------------------------------------------------------------------------------------------
# The status webhook, through leadline's own HTTP server


async def test_meta_status_webhook_updates_the_status_as_it_happens(world: World) -> None:
    meta = world.config.channel("meta-main")
    await world.define(definition(), definition(name="reject_promo", category="MARKETING"))
    await submit_templates(world.db, meta)
    async with running_app(world.config) as app:
        world.sandbox.sandbox.config = dataclasses.replace(world.sandbox.sandbox.config, leadline_url=app.url)

        decided = await world.decide(provider="meta")
        assert sorted((d["name"], d["leadline_status"]) for d in decided) == [
            ("order_update", 200),
            ("reject_promo", 200),
        ]
        await app.drain_jobs()
    approved = await world.state("order_update", "es_MX", "meta-main")
    rejected = await world.state("reject_promo", "es_MX", "meta-main")
    assert approved is not None and (approved.status, approved.rejection_reason) == ("APPROVED", None)
    assert rejected is not None and (rejected.status, rejected.rejection_reason) == ("REJECTED", "INVALID_FORMAT")
    # Only the WABA of meta-main was concerned.
    assert await world.state("order_update", "es_MX", "meta-second") is None


# --------------------------------------------------------------------------------------------
# Sending


async def test_template_not_approved_on_the_channel_is_refused(world: World) -> None:
    await world.define(definition())
    await submit_templates(world.db, world.config.channel("meta-main"))

    async with world.db.read() as conn:
        with pytest.raises(TemplateNotApproved) as pending:
            await prepare_template_send(
                conn, channel=world.config.channel("meta-main"), name="order_update", language="es_MX", variables=[]
            )
        with pytest.raises(TemplateNotApproved) as never:
            await prepare_template_send(
                conn, channel=world.config.channel("twilio-main"), name="order_update", language="es_MX", variables=[]
            )
        with pytest.raises(TemplateNotFound) as missing:
            await prepare_template_send(
                conn, channel=world.config.channel("meta-main"), name="nope", language="es_MX", variables=[]
            )

    assert (pending.value.code, pending.value.http_status, pending.value.status) == (
        "template_not_approved",
        409,
        "PENDING",
    )
    assert "'meta-main'" in pending.value.message and "PENDING" in pending.value.message
    assert "never submitted" in never.value.message
    assert (missing.value.code, missing.value.http_status) == ("template_not_found", 404)


async def test_approved_template_renders_for_each_provider(world: World) -> None:
    await world.define(definition())
    for name in ("meta-main", "twilio-main"):
        await submit_templates(world.db, world.config.channel(name))
    await world.decide()
    await sync_channel(world.db, world.config.channel("meta-main"))
    await sync_channel(world.db, world.config.channel("twilio-main"))
    twilio_state = await world.state("order_update", "es_MX", "twilio-main")
    assert twilio_state is not None and twilio_state.provider_template_id

    async with world.db.read() as conn:
        meta = await prepare_template_send(
            conn,
            channel=world.config.channel("meta-main"),
            name="order_update",
            language="es_MX",
            variables={"1": "Ana", "2": "77", "button.1": "77"},
        )
        twilio = await prepare_template_send(
            conn,
            channel=world.config.channel("twilio-main"),
            name="order_update",
            language="es_MX",
            variables=["Ana", "77", "77"],
        )
        with pytest.raises(InvalidTemplateVariables) as bad:
            await prepare_template_send(
                conn,
                channel=world.config.channel("meta-main"),
                name="order_update",
                language="es_MX",
                variables={"1": "Ana", "2": "a\nb", "colour": "red"},
            )
        assert await channels_with_approved(conn, "order_update", "es_MX") == {"meta-main", "twilio-main"}

    assert meta.rendered_text == twilio.rendered_text == "Hola Ana, tu pedido 77 va en camino.\nTienda Ejemplo"
    assert template_object(meta.send) == {
        "name": "order_update",
        "language": {"code": "es_MX"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "77"}]},
            {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "77"}]},
        ],
    }
    assert twilio.send.provider_template_id == twilio_state.provider_template_id
    assert orjson.loads(content_variables(twilio.send) or "") == {"1": "Ana", "2": "77", "3": "77"}
    assert bad.value.code == "invalid_template_variables" and bad.value.http_status == 422
    assert {p.field for p in bad.value.problems} == {"variables.colour", "variables.2", "variables.button.1"}


# --------------------------------------------------------------------------------------------
# API


async def test_api_defines_validates_and_lists_templates(world: World) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with running_app(world.config) as app:
        async with world.http.post(
            f"{app.url}/v1/templates", json={**ORDER_UPDATE, "name": "Bad Name"}, headers=headers
        ) as response:
            refused = (response.status, await response.json())
        async with world.http.post(f"{app.url}/v1/templates", json=ORDER_UPDATE, headers=headers) as response:
            created = (response.status, await response.json())
        async with world.http.get(f"{app.url}/v1/templates", headers=headers) as response:
            listed = await response.json()
        async with world.http.get(f"{app.url}/v1/templates/nope/en", headers=headers) as response:
            missing = (response.status, await response.json())

    assert refused[0] == 422 and refused[1]["error"]["code"] == "invalid_template"
    assert "name" in refused[1]["error"]["message"]
    assert created[0] == 201
    assert [(c["channel"], c["status"], c["sendable"]) for c in created[1]["channels"]] == [
        ("meta-main", "NOT_SUBMITTED", False),
        ("meta-second", "NOT_SUBMITTED", False),
        ("twilio-main", "NOT_SUBMITTED", False),
    ]
    assert [t["name"] for t in listed["templates"]] == ["order_update"]
    assert missing == (404, {"error": {"code": "template_not_found", "message": "no template 'nope' in language 'en'"}})


# --------------------------------------------------------------------------------------------
# Media header examples (Meta's Resumable Upload API)

EXAMPLE_PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
APP_ID = "987654321"


@pytest.fixture
async def media_server() -> AsyncIterator[str]:
    """Serves ``/box.png`` (EXAMPLE_PNG) over plain HTTP on an ephemeral port."""

    async def box(_: web.Request) -> web.Response:
        return web.Response(body=EXAMPLE_PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/box.png", box)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def define_unchecked(world: World, template: TemplateDefinition) -> None:
    # Validation wants a media header's URL on https; the example server of these tests is plain HTTP,
    # which the download accepts, so the definition is stored as an import would store it.
    async with world.db.transaction() as conn:
        await store.define_template(conn, template, source="test", now=datetime.now(UTC))


async def test_meta_media_header_example_is_uploaded_and_its_handle_submitted(world: World, media_server: str) -> None:
    await define_unchecked(
        world, definition(name="with_media", header={"type": "image", "url": f"{media_server}/box.png"})
    )
    channel = world.config.channel("meta-main").model_copy(update={"app_id": APP_ID})
    await world.control("DELETE", "/_sandbox/requests")

    [outcome] = await submit_templates(world.db, channel)

    assert (outcome.error, outcome.created, outcome.status) == (None, True, "PENDING")
    start, upload, create = (await world.control("GET", "/_sandbox/requests?provider=meta"))["requests"]
    assert (start["method"], start["path"]) == ("POST", f"/meta/v25.0/{APP_ID}/uploads")
    assert parse_qs(start["query"]) == {
        "file_name": ["box.png"],
        "file_length": [str(len(EXAMPLE_PNG))],
        "file_type": ["image/png"],
    }
    assert start["headers"]["Authorization"] == "Bearer meta-access-token"
    assert "access_token" not in start["query"]
    assert (upload["method"], upload["path"]) == ("POST", "/meta/v25.0/upload:sbx1")
    assert upload["headers"]["Authorization"] == "OAuth meta-access-token"
    assert upload["headers"]["file_offset"] == "0"
    assert upload["headers"]["Content-Type"] == "image/png"
    assert int(upload["headers"]["Content-Length"]) == len(EXAMPLE_PNG)
    assert (create["method"], create["path"]) == ("POST", "/meta/v25.0/310000000000001/message_templates")
    handle = example_handle("image/png", EXAMPLE_PNG)
    assert orjson.loads(create["body"])["components"][0] == {
        "type": "HEADER",
        "format": "IMAGE",
        "example": {"header_handle": [handle]},
    }

    await world.decide(provider="meta", name="with_media")
    await sync_channel(world.db, channel)
    state = await world.state("with_media", "es_MX", "meta-main")
    assert state is not None
    assert (state.status, state.provider_template_id) == ("APPROVED", outcome.provider_template_id)


async def test_meta_media_header_without_app_id_is_reported_and_nothing_uploaded(
    world: World, media_server: str
) -> None:
    await define_unchecked(
        world, definition(name="with_media", header={"type": "image", "url": f"{media_server}/box.png"})
    )
    await world.control("DELETE", "/_sandbox/requests")

    [outcome] = await submit_templates(world.db, world.config.channel("meta-main"))

    assert outcome.error == (
        "missing_media_handle: template with_media (es_MX): Meta reviews image headers from an uploaded example; "
        "give header.meta_handle, or app_id on the channel so that leadline uploads it"
    )
    assert (await world.control("GET", "/_sandbox/requests?provider=meta"))["requests"] == []
    assert await world.provider_templates("meta") == []


async def test_meta_example_media_of_the_wrong_type_is_reported(world: World, media_server: str) -> None:
    await define_unchecked(
        world, definition(name="with_video", header={"type": "video", "url": f"{media_server}/box.png"})
    )
    channel = world.config.channel("meta-main").model_copy(update={"app_id": APP_ID})

    [outcome] = await submit_templates(world.db, channel)

    assert outcome.error == "invalid_example_media: the example of a video header must be video/mp4, not image/png"
    assert await world.provider_templates("meta") == []


async def test_sandbox_refuses_a_meta_media_header_without_a_handle(world: World) -> None:
    async with world.http.post(
        f"{world.sandbox.meta_api_base_url}/310000000000001/message_templates",
        headers={"Authorization": "Bearer meta-access-token"},
        json={
            "name": "with_media",
            "language": "es_MX",
            "category": "UTILITY",
            "components": [{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "Hola"}],
        },
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == 100
    assert "header_handle" in error["error_data"]["details"]
