"""Twilio webhooks through the real HTTP server, on SQLite and PostgreSQL.

Each fixture of ``tests/fixtures/twilio`` is posted as Twilio posts it: a URL-encoded form signed with
the Auth Token for the public URL (leadline's ``public_url``), whatever address the request reaches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from helpers import (
    FIXTURES,
    LUCIA,
    assert_contains,
    message,
    only_lead,
    post_twilio,
    record_sent_message,
    row_counts,
    timeline_of,
    twilio_fixture,
)
from sqlalchemy import select

from conftest import RunningApp
from leadline.providers.twilio.webhook import EMPTY_TWIML
from leadline.store.tables import message_statuses, webhook_rejections


@dataclass(frozen=True)
class Expected:
    kind: str
    summary: str
    content: dict[str, Any] = field(default_factory=dict)


MESSAGE_FIXTURES: dict[str, Expected] = {
    "inbound_text": Expected("text", "Hola, ¿tienen envío gratis?"),
    "inbound_image": Expected(
        "image", "[image] Este es el modelo", {"media": [{"mime_type": "image/jpeg", "caption": "Este es el modelo"}]}
    ),
    "inbound_video": Expected("video", "[video] Así se arma"),
    "inbound_audio": Expected("audio", "[audio]", {"media": [{"mime_type": "audio/ogg"}]}),
    "inbound_document": Expected("document", "[document] Cotización firmada"),
    "inbound_sticker": Expected("sticker", "[sticker]"),
    "inbound_contacts": Expected("contacts", "[contacts] 1 shared", {"media": [{"mime_type": "text/vcard"}]}),
    "inbound_location": Expected(
        "location",
        "[location] Oficina Centro (19.43260,-99.13320)",
        {"location": {"latitude": 19.4326, "longitude": -99.1332, "address": "Av. Ejemplo 123, CDMX"}},
    ),
    "inbound_button_reply": Expected(
        "button_reply",
        "[button_reply] Sí, confirmar",
        {
            "reply_choice": {"id": "confirm_yes", "title": "Sí, confirmar"},
            "reply_to": "MM6f708192a3b4c5d6e7f8091a2b3c4d5e",
        },
    ),
    "inbound_template_button": Expected(
        "template_button",
        "[template_button] Ver catálogo",
        {"reply_choice": {"id": "show_catalog"}, "reply_to": "MM60718293a4b5c6d7e8f9012345678901"},
    ),
    "inbound_referral": Expected(
        "text",
        "Hola, vi su anuncio de envío gratis",
        {
            "referral": {
                "ctwa_clid": twilio_fixture("inbound_referral")["ReferralCtwaClid"],
                "source_id": "120200000000000001",
                "source_type": "ad",
            }
        },
    ),
    "inbound_reply": Expected("text", "¿Y este en talla M?", {"reply_to": "SM8192a3b4c5d6e7f8091a2b3c4d5e6f70"}),
    "inbound_unknown_type": Expected("unsupported", "[unsupported: reaction]", {"original_kind": "reaction"}),
}
STATUS_FIXTURES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "status_queued": ("accepted", None),
    "status_sent": ("sent", None),
    "status_delivered": ("delivered", None),
    "status_read": ("read", None),
    "status_failed": ("failed", {"code": "63024"}),
    "status_undelivered": ("failed", {"code": "63016"}),
}


def test_every_twilio_fixture_is_covered() -> None:
    names = {path.stem for path in (FIXTURES / "twilio").glob("*.json")}
    assert names == set(MESSAGE_FIXTURES) | set(STATUS_FIXTURES)


def assert_empty_twiml(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert response.content == EMPTY_TWIML


@pytest.mark.parametrize("fixture", sorted(MESSAGE_FIXTURES))
async def test_twilio_message_appears_on_the_leads_timeline(app: RunningApp, fixture: str) -> None:
    params = twilio_fixture(fixture)
    expected = MESSAGE_FIXTURES[fixture]
    async with httpx.AsyncClient() as client:
        response = await post_twilio(client, app.url, params)

        assert_empty_twiml(response)
        lead = await only_lead(client, app.url, LUCIA)
        assert (lead["phone"], lead["display_name"], lead["last_inbound_channel"]) == (
            LUCIA,
            "Lucía Ramos",
            "twilio-main",
        )
        [entry] = await timeline_of(client, app.url, lead["id"])
        assert (entry["kind"], entry["summary"], entry["channel"]) == ("message_in", expected.summary, "twilio-main")
        found = await message(client, app.url, entry["message_id"])
    assert (found["direction"], found["provider"], found["kind"]) == ("in", "twilio", expected.kind)
    assert found["provider_message_id"] == params["MessageSid"]
    assert_contains(found["content"], expected.content)


@pytest.mark.parametrize("fixture", sorted(STATUS_FIXTURES))
async def test_twilio_status_callback_moves_the_sent_message(app: RunningApp, fixture: str) -> None:
    params = twilio_fixture(fixture)
    status, error = STATUS_FIXTURES[fixture]
    async with httpx.AsyncClient() as client:
        await post_twilio(client, app.url, twilio_fixture("inbound_text"))
        lead = await only_lead(client, app.url, LUCIA)
        sent = await record_sent_message(
            app.services.db,
            lead_id=lead["id"],
            channel="twilio-main",
            provider="twilio",
            provider_message_id=params["MessageSid"],
        )

        response = await post_twilio(client, app.url, params)

        assert_empty_twiml(response)
        found = await message(client, app.url, sent)
    assert found["status"] == status
    assert [entry["status"] for entry in found["status_history"]] == [status]
    if error is None:
        assert found["error"] is None
    else:
        assert_contains(found["error"], error)
        assert_contains(found["status_history"][0]["error"], error)


async def test_twilio_status_for_an_unknown_message_is_kept(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        response = await post_twilio(client, app.url, twilio_fixture("status_read"))
    assert_empty_twiml(response)
    async with app.services.db.read() as conn:
        kept = list(await conn.execute(select(message_statuses.c.provider_message_id, message_statuses.c.status)))
    assert kept == [("SM9a8b7c6d5e4f30211a2b3c4d5e6f7081", "read")]


async def test_twilio_webhook_behind_a_proxy_is_verified_against_the_public_url(app: RunningApp) -> None:
    """The request reaches http://127.0.0.1:port, but Twilio signed the URL it called: public_url."""
    async with httpx.AsyncClient() as client:
        response = await post_twilio(client, app.url, twilio_fixture("inbound_text"))
        assert_empty_twiml(response)
        assert await only_lead(client, app.url, LUCIA)


async def test_twilio_webhook_signed_for_the_local_address_is_refused(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        response = await post_twilio(
            client, app.url, twilio_fixture("inbound_text"), signed_for=f"{app.url}/webhooks/twilio"
        )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "bad_signature"
    counts = await row_counts(app.services.db)
    assert (counts["leads"], counts["messages"]) == (0, 0)
    async with app.services.db.read() as conn:
        [rejection] = list(await conn.execute(select(webhook_rejections)))
    assert (rejection.provider, rejection.channel, rejection.code) == ("twilio", "twilio-main", "bad_signature")


async def test_twilio_has_no_subscription_handshake(app: RunningApp) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{app.url}/webhooks/twilio")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
