"""The Meta and Twilio adapters against the provider sandbox, over real HTTP.

The sandbox runs in-process on an ephemeral port; a small aiohttp receiver on another port stands in
for leadline's webhook endpoints. Every assertion about what a provider received reads the sandbox's
recorded requests through its control API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from leadline.config import config_from_mapping
from leadline.domain.messages import DeliveryStatus, InboundMessage, StatusUpdate
from leadline.providers.base import ErrorClass, ProviderError, RawRequest, TemplateSend, WebhookTranslator
from leadline.providers.http import new_client_session
from leadline.providers.meta.client import MetaClient
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.signature import meta_signature
from leadline.providers.meta.webhook import MetaWebhookTranslator
from leadline.providers.twilio.client import TwilioClient
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.signature import twilio_signature
from leadline.providers.twilio.webhook import TwilioWebhookTranslator
from leadline.sandbox.config import MetaSandboxChannel, SandboxConfig, TwilioSandboxChannel
from leadline.sandbox.server import RunningSandbox, start_sandbox

CUSTOMER = "+5215512345678"
CUSTOMER_DIGITS = "5215512345678"
BUSINESS = "+15550001234"
SERVICE_BUSINESS = "+15550005678"
PUBLIC_URL = "https://crm.example.com"

META_TOKEN = "EAAG-sandbox-token"
META_SECRET = "0123456789abcdef0123456789abcdef"
PHONE_NUMBER_ID = "420000000000002"
WABA_ID = "310000000000001"

TWILIO_SID = "AC00000000000000000000000000000001"
TWILIO_TOKEN = "12345678901234567890123456789012"
SERVICE_SID = "MG00000000000000000000000000000001"
CONTENT_SID = "HX00000000000000000000000000000001"


# --------------------------------------------------------------------------------------------
# A stand-in for leadline's webhook endpoints


@dataclass
class ReceivedWebhook:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body.decode(), keep_blank_values=True)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str = ""
    received: list[ReceivedWebhook] = field(default_factory=list)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def on(self, prefix: str) -> list[ReceivedWebhook]:
        return [r for r in self.received if r.path.startswith(prefix)]

    async def wait_for(self, count: int) -> None:
        """Until ``count`` webhooks have arrived; the bound only keeps a broken test from hanging."""
        async with asyncio.timeout(5.0), self.arrived:
            await self.arrived.wait_for(lambda: len(self.received) >= count)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(
            ReceivedWebhook(request.path, request.query_string, dict(request.headers), await request.read())
        )
        async with self.arrived:
            self.arrived.notify_all()
        return web.Response(text="ok")


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/webhooks/{tail:.*}", receiver.handle)
    runner, receiver.url = await _serve(app)
    yield receiver
    await runner.cleanup()


@pytest.fixture
async def sandbox(receiver: Receiver) -> AsyncIterator[RunningSandbox]:
    config = SandboxConfig(
        leadline_url=receiver.url,
        leadline_public_url=PUBLIC_URL,
        meta=(
            MetaSandboxChannel(
                name="meta-main",
                phone_number_id=PHONE_NUMBER_ID,
                business_number=BUSINESS,
                app_secret=META_SECRET,
                access_token=META_TOKEN,
                waba_id=WABA_ID,
            ),
        ),
        twilio=(
            TwilioSandboxChannel(
                name="twilio-main", account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN, business_number=BUSINESS
            ),
            TwilioSandboxChannel(
                name="twilio-service",
                account_sid=TWILIO_SID,
                auth_token=TWILIO_TOKEN,
                business_number=SERVICE_BUSINESS,
                messaging_service_sid=SERVICE_SID,
            ),
        ),
        status_mode="manual",
    )
    running = await start_sandbox(config)
    yield running
    await running.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    session = new_client_session(timeout_seconds=5.0)
    yield session
    await session.close()


def meta_channel(sandbox: RunningSandbox, **changes: Any) -> MetaChannelConfig:
    fields: dict[str, Any] = {
        "name": "meta-main",
        "business_number": BUSINESS,
        "phone_number_id": PHONE_NUMBER_ID,
        "waba_id": WABA_ID,
        "app_secret": SecretStr(META_SECRET),
        "verify_token": SecretStr("verify-me"),
        "access_token": SecretStr(META_TOKEN),
        "api_base_url": sandbox.meta_api_base_url,
    }
    return MetaChannelConfig(**(fields | changes))


def twilio_channel(sandbox: RunningSandbox, **changes: Any) -> TwilioChannelConfig:
    fields: dict[str, Any] = {
        "name": "twilio-main",
        "business_number": BUSINESS,
        "account_sid": TWILIO_SID,
        "auth_token": SecretStr(TWILIO_TOKEN),
        "api_base_url": sandbox.twilio_api_base_url,
    }
    return TwilioChannelConfig(**(fields | changes))


@pytest.fixture
def meta_channel_config(sandbox: RunningSandbox) -> MetaChannelConfig:
    return meta_channel(sandbox)


@pytest.fixture
def twilio_channel_config(sandbox: RunningSandbox) -> TwilioChannelConfig:
    return twilio_channel(sandbox)


@pytest.fixture
def meta(meta_channel_config: MetaChannelConfig, session: aiohttp.ClientSession) -> MetaClient:
    return MetaClient(meta_channel_config, session)


@pytest.fixture
def twilio(twilio_channel_config: TwilioChannelConfig, session: aiohttp.ClientSession) -> TwilioClient:
    return TwilioClient(twilio_channel_config, session)


@pytest.fixture
def twilio_service(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> TwilioClient:
    channel = twilio_channel(
        sandbox, name="twilio-service", business_number=SERVICE_BUSINESS, messaging_service_sid=SERVICE_SID
    )
    return TwilioClient(channel, session, status_callback_url=f"{PUBLIC_URL}/webhooks/twilio/status?channel=svc")


# --------------------------------------------------------------------------------------------
# Control API helpers (over HTTP, like any sandbox user)


async def control(
    session: aiohttp.ClientSession, sandbox: RunningSandbox, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, f"{sandbox.url}/_sandbox{path}", json=body) as response:
        return response.status, await response.json()


async def provider_requests(
    session: aiohttp.ClientSession, sandbox: RunningSandbox, provider: str
) -> list[dict[str, Any]]:
    status, data = await control(session, sandbox, "GET", f"/requests?provider={provider}")
    assert status == 200
    requests: list[dict[str, Any]] = data["requests"]
    return requests


async def last_request(session: aiohttp.ClientSession, sandbox: RunningSandbox, provider: str) -> dict[str, Any]:
    requests = await provider_requests(session, sandbox, provider)
    assert requests, f"the sandbox received no {provider} request"
    return requests[-1]


async def inject_fault(session: aiohttp.ClientSession, sandbox: RunningSandbox, **fault: Any) -> None:
    status, data = await control(session, sandbox, "POST", "/faults", fault)
    assert status == 200, data


async def flush(session: aiohttp.ClientSession, sandbox: RunningSandbox) -> dict[str, Any]:
    status, data = await control(session, sandbox, "POST", "/statuses/flush")
    assert status == 200
    result: dict[str, Any] = data
    return result


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------------------------
# Meta: what each send puts on the wire


async def test_meta_text_is_posted_to_the_phone_numbers_messages_edge_with_the_bearer_token(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    message_id = await meta.send_text(CUSTOMER, "Tu pedido sale hoy: https://shop.example/t/8812", preview_url=True)

    request = await last_request(session, sandbox, "meta")
    assert request["method"] == "POST"
    assert request["url"] == f"{sandbox.url}/meta/v25.0/{PHONE_NUMBER_ID}/messages"
    assert request["headers"]["Authorization"] == f"Bearer {META_TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {
        "messaging_product": "whatsapp",
        "to": CUSTOMER_DIGITS,
        "type": "text",
        "text": {"body": "Tu pedido sale hoy: https://shop.example/t/8812", "preview_url": True},
    }
    assert message_id.startswith("wamid.")


async def test_meta_reply_quotes_the_earlier_message_in_context(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await meta.send_text(CUSTOMER, "¿Y en talla M?", reply_to="wamid.RPL0001")

    body = json.loads((await last_request(session, sandbox, "meta"))["body"])
    assert body == {
        "messaging_product": "whatsapp",
        "to": CUSTOMER_DIGITS,
        "type": "text",
        "text": {"body": "¿Y en talla M?"},
        "context": {"message_id": "wamid.RPL0001"},
    }


async def test_meta_positional_template_with_header_and_buttons(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    template = TemplateSend(
        name="order_update",
        language="es_MX",
        body_parameters=("Lucía", "8812"),
        header={"type": "image", "url": "https://cdn.example/box.jpg"},
        buttons=(
            {"sub_type": "quick_reply", "payload": "reschedule:8812"},
            {"sub_type": "url", "index": 1, "text": "8812"},
        ),
    )
    await meta.send_template(CUSTOMER, template)

    body = json.loads((await last_request(session, sandbox, "meta"))["body"])
    assert body == {
        "messaging_product": "whatsapp",
        "to": CUSTOMER_DIGITS,
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "es_MX"},
            "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://cdn.example/box.jpg"}}]},
                {
                    "type": "body",
                    "parameters": [{"type": "text", "text": "Lucía"}, {"type": "text", "text": "8812"}],
                },
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": "0",
                    "parameters": [{"type": "payload", "payload": "reschedule:8812"}],
                },
                {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "8812"}]},
            ],
        },
    }


async def test_meta_named_template_sends_parameter_names(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    template = TemplateSend(name="welcome", language="en_US", named_parameters={"first_name": "Tom", "order": "8812"})
    await meta.send_template(CUSTOMER, template, reply_to="wamid.IN0001")

    body = json.loads((await last_request(session, sandbox, "meta"))["body"])
    assert body["template"] == {
        "name": "welcome",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Tom", "parameter_name": "first_name"},
                    {"type": "text", "text": "8812", "parameter_name": "order"},
                ],
            }
        ],
    }
    assert body["context"] == {"message_id": "wamid.IN0001"}


async def test_meta_template_without_parameters_has_no_components(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await meta.send_template(CUSTOMER, TemplateSend(name="hello_world", language="en_US"))

    body = json.loads((await last_request(session, sandbox, "meta"))["body"])
    assert body["template"] == {"name": "hello_world", "language": {"code": "en_US"}}


@pytest.mark.parametrize(
    ("kind", "caption", "filename", "expected_type", "expected_object"),
    [
        (
            "image",
            "Modelo disponible",
            None,
            "image",
            {"link": "https://files.example/a", "caption": "Modelo disponible"},
        ),
        ("video", "Así llegó", None, "video", {"link": "https://files.example/a", "caption": "Así llegó"}),
        (
            "document",
            "Tu factura",
            "factura-8812.pdf",
            "document",
            {"link": "https://files.example/a", "caption": "Tu factura", "filename": "factura-8812.pdf"},
        ),
        ("audio", None, None, "audio", {"link": "https://files.example/a"}),
        ("voice", None, None, "audio", {"link": "https://files.example/a"}),
        ("sticker", None, None, "sticker", {"link": "https://files.example/a"}),
    ],
)
async def test_meta_media_is_sent_by_link(
    meta: MetaClient,
    sandbox: RunningSandbox,
    session: aiohttp.ClientSession,
    kind: str,
    caption: str | None,
    filename: str | None,
    expected_type: str,
    expected_object: dict[str, str],
) -> None:
    message_id = await meta.send_media(CUSTOMER, kind, "https://files.example/a", caption=caption, filename=filename)

    body = json.loads((await last_request(session, sandbox, "meta"))["body"])
    assert body == {
        "messaging_product": "whatsapp",
        "to": CUSTOMER_DIGITS,
        "type": expected_type,
        expected_type: expected_object,
    }
    assert message_id.startswith("wamid.")


async def test_meta_mark_read(meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    await meta.mark_read("wamid.TXT0001")

    request = await last_request(session, sandbox, "meta")
    assert request["url"] == f"{sandbox.url}/meta/v25.0/{PHONE_NUMBER_ID}/messages"
    assert request["headers"]["Authorization"] == f"Bearer {META_TOKEN}"
    assert json.loads(request["body"]) == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.TXT0001",
    }


async def test_meta_channel_without_token_refuses_to_send(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    client = MetaClient(meta_channel(sandbox, access_token=None), session)

    with pytest.raises(ProviderError) as caught:
        await client.send_text(CUSTOMER, "hola")

    assert (caught.value.error_class, caught.value.code) == (ErrorClass.CHANNEL_FAILURE, "no_access_token")
    assert await provider_requests(session, sandbox, "meta") == []


# --------------------------------------------------------------------------------------------
# Twilio: what each send puts on the wire


async def test_twilio_text_is_a_form_post_with_basic_auth(
    twilio: TwilioClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    message_id = await twilio.send_text(CUSTOMER, "Hola Lucía", reply_to="SMignored")

    request = await last_request(session, sandbox, "twilio")
    assert request["method"] == "POST"
    assert request["url"] == f"{sandbox.url}/twilio/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    assert request["headers"]["Authorization"] == basic_auth(TWILIO_SID, TWILIO_TOKEN)
    assert request["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qsl(request["body"]) == [
        ("To", f"whatsapp:{CUSTOMER}"),
        ("From", f"whatsapp:{BUSINESS}"),
        ("Body", "Hola Lucía"),
    ]
    assert message_id.startswith("SM") and len(message_id) == 34


async def test_twilio_template_goes_through_the_messaging_service_with_content_variables(
    twilio_service: TwilioClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    template = TemplateSend(
        name="order_update", language="es", body_parameters=("Lucía", "8812"), provider_template_id=CONTENT_SID
    )
    await twilio_service.send_template(CUSTOMER, template)

    form = parse_qsl((await last_request(session, sandbox, "twilio"))["body"])
    assert form == [
        ("To", f"whatsapp:{CUSTOMER}"),
        ("MessagingServiceSid", SERVICE_SID),
        ("ContentSid", CONTENT_SID),
        ("ContentVariables", '{"1":"Lucía","2":"8812"}'),
        ("StatusCallback", f"{PUBLIC_URL}/webhooks/twilio/status?channel=svc"),
    ]


async def test_twilio_named_template_variables_keep_their_names(
    twilio: TwilioClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    template = TemplateSend(
        name="welcome", language="en", named_parameters={"first_name": "Tom"}, provider_template_id=CONTENT_SID
    )
    await twilio.send_template(CUSTOMER, template)

    form = dict(parse_qsl((await last_request(session, sandbox, "twilio"))["body"]))
    assert form["From"] == f"whatsapp:{BUSINESS}"
    assert json.loads(form["ContentVariables"]) == {"first_name": "Tom"}


async def test_twilio_template_without_content_sid_is_refused_before_sending(
    twilio: TwilioClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ProviderError) as caught:
        await twilio.send_template(CUSTOMER, TemplateSend(name="welcome", language="en"))

    assert caught.value.error_class is ErrorClass.BAD_REQUEST
    assert await provider_requests(session, sandbox, "twilio") == []


@pytest.mark.parametrize("kind", ["image", "video", "audio", "document", "sticker"])
async def test_twilio_media_is_a_media_url_with_the_caption_as_body(
    twilio: TwilioClient, sandbox: RunningSandbox, session: aiohttp.ClientSession, kind: str
) -> None:
    await twilio.send_media(CUSTOMER, kind, "https://files.example/f-8812", caption="Tu archivo", filename="x.pdf")

    form = parse_qsl((await last_request(session, sandbox, "twilio"))["body"])
    assert form == [
        ("To", f"whatsapp:{CUSTOMER}"),
        ("From", f"whatsapp:{BUSINESS}"),
        ("MediaUrl", "https://files.example/f-8812"),
        ("Body", "Tu archivo"),
    ]


async def test_twilio_mark_read_sends_nothing(
    twilio: TwilioClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await twilio.mark_read("SM1a2b3c4d5e6f708192a3b4c5d6e7f809")

    assert await provider_requests(session, sandbox, "twilio") == []


# --------------------------------------------------------------------------------------------
# Errors: every class, from the sandbox's wire-format answers


@pytest.mark.parametrize(
    ("fault", "expected_class", "expected_code", "expected_status"),
    [
        ({"mode": "error", "code": 131042, "http_status": 400}, ErrorClass.CHANNEL_FAILURE, "131042", 400),
        ({"mode": "throttle"}, ErrorClass.RETRY_LATER, "130429", 429),
        ({"mode": "error", "code": 131047}, ErrorClass.NEEDS_TEMPLATE, "131047", 400),
        ({"mode": "error", "code": 131026}, ErrorClass.RECIPIENT_UNREACHABLE, "131026", 400),
        ({"mode": "error", "code": 100}, ErrorClass.BAD_REQUEST, "100", 400),
        ({"mode": "error", "code": 190, "http_status": 401}, ErrorClass.CHANNEL_FAILURE, "190", 401),
        ({"mode": "down"}, ErrorClass.RETRY_LATER, "http_503", 503),
    ],
)
async def test_meta_errors_are_classified(
    meta: MetaClient,
    sandbox: RunningSandbox,
    session: aiohttp.ClientSession,
    fault: dict[str, Any],
    expected_class: ErrorClass,
    expected_code: str,
    expected_status: int,
) -> None:
    await inject_fault(session, sandbox, provider="meta", **fault)

    with pytest.raises(ProviderError) as caught:
        await meta.send_text(CUSTOMER, "hola")

    assert caught.value.error_class is expected_class
    assert caught.value.code == expected_code
    assert caught.value.http_status == expected_status


async def test_meta_throttle_carries_a_retry_hint_and_the_providers_retry_after_wins(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await inject_fault(session, sandbox, provider="meta", mode="throttle", count=1)
    with pytest.raises(ProviderError) as caught:
        await meta.send_text(CUSTOMER, "hola")
    assert caught.value.retry_after == 1.0

    await inject_fault(session, sandbox, provider="meta", mode="throttle", retry_after=7, count=1)
    with pytest.raises(ProviderError) as caught:
        await meta.send_text(CUSTOMER, "hola")
    assert caught.value.retry_after == 7.0


async def test_a_counted_fault_clears_itself(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await inject_fault(session, sandbox, provider="meta", mode="error", code=131000, http_status=500, count=2)

    for _ in range(2):
        with pytest.raises(ProviderError):
            await meta.send_text(CUSTOMER, "hola")
    assert (await meta.send_text(CUSTOMER, "hola")).startswith("wamid.")


async def test_a_fault_lasts_until_deleted(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await inject_fault(session, sandbox, provider="meta", mode="down")
    for _ in range(3):
        with pytest.raises(ProviderError):
            await meta.send_text(CUSTOMER, "hola")

    status, _ = await control(session, sandbox, "DELETE", "/faults")
    assert status == 200
    assert (await meta.send_text(CUSTOMER, "hola")).startswith("wamid.")


async def test_meta_wrong_token_and_unknown_number_are_refused_like_graph_does(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ProviderError) as caught:
        await MetaClient(meta_channel(sandbox, access_token=SecretStr("wrong")), session).send_text(CUSTOMER, "hola")
    assert (caught.value.error_class, caught.value.code, caught.value.http_status) == (
        ErrorClass.CHANNEL_FAILURE,
        "190",
        401,
    )

    with pytest.raises(ProviderError) as caught:
        await MetaClient(meta_channel(sandbox, phone_number_id="999"), session).send_text(CUSTOMER, "hola")
    assert (caught.value.error_class, caught.value.code) == (ErrorClass.BAD_REQUEST, "100")


@pytest.mark.parametrize(
    ("fault", "expected_class", "expected_code", "expected_status"),
    [
        ({"mode": "error", "code": 63016}, ErrorClass.NEEDS_TEMPLATE, "63016", 400),
        ({"mode": "throttle"}, ErrorClass.RETRY_LATER, "20429", 429),
        ({"mode": "error", "code": 21211}, ErrorClass.RECIPIENT_UNREACHABLE, "21211", 400),
        ({"mode": "error", "code": 63112}, ErrorClass.CHANNEL_FAILURE, "63112", 400),
        ({"mode": "error", "code": 63027}, ErrorClass.BAD_REQUEST, "63027", 400),
        ({"mode": "down"}, ErrorClass.RETRY_LATER, "http_503", 503),
    ],
)
async def test_twilio_errors_are_classified(
    twilio: TwilioClient,
    sandbox: RunningSandbox,
    session: aiohttp.ClientSession,
    fault: dict[str, Any],
    expected_class: ErrorClass,
    expected_code: str,
    expected_status: int,
) -> None:
    await inject_fault(session, sandbox, provider="twilio", **fault)

    with pytest.raises(ProviderError) as caught:
        await twilio.send_text(CUSTOMER, "hola")

    assert caught.value.error_class is expected_class
    assert caught.value.code == expected_code
    assert caught.value.http_status == expected_status


async def test_twilio_wrong_credentials_are_a_channel_failure(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    client = TwilioClient(twilio_channel(sandbox, auth_token=SecretStr("not-the-token")), session)

    with pytest.raises(ProviderError) as caught:
        await client.send_text(CUSTOMER, "hola")

    assert (caught.value.error_class, caught.value.code, caught.value.http_status) == (
        ErrorClass.CHANNEL_FAILURE,
        "20003",
        401,
    )


async def test_twilio_sandbox_checks_sends_like_twilio(sandbox: RunningSandbox, session: aiohttp.ClientSession) -> None:
    """A sender the account does not own is refused, as Twilio refuses it (63007)."""
    client = TwilioClient(twilio_channel(sandbox, business_number="+15550009999"), session)

    with pytest.raises(ProviderError) as caught:
        await client.send_text(CUSTOMER, "hola")

    assert (caught.value.code, caught.value.error_class) == ("63007", ErrorClass.CHANNEL_FAILURE)


@pytest.mark.parametrize("provider", ["meta", "twilio"])
async def test_a_provider_that_hangs_is_a_timeout_to_retry(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, provider: str
) -> None:
    await inject_fault(session, sandbox, provider=provider, mode="timeout", seconds=30)
    impatient = new_client_session(timeout_seconds=0.3)
    try:
        client = (
            MetaClient(meta_channel(sandbox), impatient)
            if provider == "meta"
            else TwilioClient(twilio_channel(sandbox), impatient)
        )
        with pytest.raises(ProviderError) as caught:
            await client.send_text(CUSTOMER, "hola")
    finally:
        await impatient.close()

    assert (caught.value.error_class, caught.value.code) == (ErrorClass.RETRY_LATER, "timeout")


async def test_an_unreachable_provider_is_a_connection_error_to_retry(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    channel = TwilioChannelConfig(
        name="nowhere",
        business_number=BUSINESS,
        account_sid=TWILIO_SID,
        auth_token=SecretStr(TWILIO_TOKEN),
        api_base_url=f"http://127.0.0.1:{closed_port}",
    )

    with pytest.raises(ProviderError) as caught:
        await TwilioClient(channel, session).send_text(CUSTOMER, "hola")

    assert (caught.value.error_class, caught.value.code) == (ErrorClass.RETRY_LATER, "connection_error")
    assert TWILIO_TOKEN not in str(caught.value)


# --------------------------------------------------------------------------------------------
# Status callbacks


async def test_meta_status_callbacks_are_signed_with_the_app_secret_and_follow_the_reference_shape(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    message_id = await meta.send_text(CUSTOMER, "hola")
    assert receiver.received == []  # manual mode: nothing until flushed

    result = await flush(session, sandbox)

    assert (result["delivered"], result["attempted"]) == (3, 3)
    callbacks = receiver.on("/webhooks/meta")
    assert len(callbacks) == 3
    for callback in callbacks:
        assert callback.headers["X-Hub-Signature-256"] == meta_signature(META_SECRET, callback.body)
        assert callback.headers["Content-Type"] == "application/json"
    payloads = [c.json() for c in callbacks]
    assert [p["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] for p in payloads] == [
        "sent",
        "delivered",
        "read",
    ]
    first = payloads[0]
    assert first["object"] == "whatsapp_business_account"
    assert first["entry"][0]["id"] == WABA_ID
    change = first["entry"][0]["changes"][0]
    assert change["field"] == "messages"
    assert change["value"]["messaging_product"] == "whatsapp"
    assert change["value"]["metadata"] == {"display_phone_number": "15550001234", "phone_number_id": PHONE_NUMBER_ID}
    status = change["value"]["statuses"][0]
    assert status["id"] == message_id
    assert status["recipient_id"] == CUSTOMER_DIGITS
    assert status["timestamp"].isdigit()
    assert status["pricing"]["pricing_model"] == "PMP"

    assert (await flush(session, sandbox))["attempted"] == 0


async def test_twilio_status_callbacks_are_signed_against_leadlines_public_url(
    twilio: TwilioClient, sandbox: RunningSandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    message_id = await twilio.send_text(CUSTOMER, "hola")

    assert (await flush(session, sandbox))["delivered"] == 3

    callbacks = receiver.on("/webhooks/twilio")
    assert [c.path for c in callbacks] == ["/webhooks/twilio"] * 3
    for callback in callbacks:
        params = callback.form()
        expected = twilio_signature(TWILIO_TOKEN, f"{PUBLIC_URL}/webhooks/twilio", params)
        assert callback.headers["X-Twilio-Signature"] == expected
        assert callback.headers["Content-Type"] == "application/x-www-form-urlencoded"
    forms = [dict(c.form()) for c in callbacks]
    assert [f["MessageStatus"] for f in forms] == ["sent", "delivered", "read"]
    assert [f.get("EventType") for f in forms] == [None, "DELIVERED", "READ"]
    for form in forms:
        assert form["MessageSid"] == form["SmsSid"] == message_id
        assert form["AccountSid"] == TWILIO_SID
        assert form["From"] == f"whatsapp:{BUSINESS}"
        assert form["To"] == f"whatsapp:{CUSTOMER}"
        assert form["ApiVersion"] == "2010-04-01"
        assert form["ChannelPrefix"] == "whatsapp"


async def test_twilio_status_callback_url_of_the_send_is_called_and_signed_as_given(
    twilio_service: TwilioClient, sandbox: RunningSandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    await twilio_service.send_text(CUSTOMER, "hola")
    await flush(session, sandbox)

    callbacks = receiver.on("/webhooks/twilio/status")
    assert len(callbacks) == 3
    for callback in callbacks:
        assert callback.query == "channel=svc"
        signed_url = f"{PUBLIC_URL}/webhooks/twilio/status?channel=svc"
        assert callback.headers["X-Twilio-Signature"] == twilio_signature(TWILIO_TOKEN, signed_url, callback.form())
        assert dict(callback.form())["MessagingServiceSid"] == SERVICE_SID


@pytest.mark.parametrize(
    ("provider", "code"),
    [("meta", 131047), ("twilio", 63016)],
)
async def test_an_accepted_send_can_fail_later_in_its_status_callback(
    sandbox: RunningSandbox,
    session: aiohttp.ClientSession,
    receiver: Receiver,
    meta: MetaClient,
    twilio: TwilioClient,
    provider: str,
    code: int,
) -> None:
    await inject_fault(session, sandbox, provider=provider, mode="async_error", code=code, count=1)
    client: MetaClient | TwilioClient = meta if provider == "meta" else twilio

    message_id = await client.send_text(CUSTOMER, "hola")
    assert (await flush(session, sandbox))["delivered"] == 1

    [callback] = receiver.received
    if provider == "meta":
        status = callback.json()["entry"][0]["changes"][0]["value"]["statuses"][0]
        assert (status["id"], status["status"]) == (message_id, "failed")
        assert status["errors"][0]["code"] == code
        assert status["errors"][0]["error_data"]["details"]
    else:
        form = dict(callback.form())
        assert (form["MessageSid"], form["MessageStatus"], form["ErrorCode"]) == (message_id, "failed", str(code))


async def test_auto_mode_delivers_the_statuses_on_its_own(
    meta: MetaClient, sandbox: RunningSandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    status, _ = await control(session, sandbox, "POST", "/statuses/mode", {"mode": "auto", "delay": 0.01})
    assert status == 200

    message_id = await meta.send_text(CUSTOMER, "hola")
    await receiver.wait_for(3)

    statuses = [c.json()["entry"][0]["changes"][0]["value"]["statuses"][0] for c in receiver.received]
    assert [(s["id"], s["status"]) for s in statuses] == [
        (message_id, "sent"),
        (message_id, "delivered"),
        (message_id, "read"),
    ]


# --------------------------------------------------------------------------------------------
# Inbound injection


async def test_injected_meta_message_is_a_signed_reference_webhook(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    status, answer = await control(
        session,
        sandbox,
        "POST",
        "/inbound",
        {"provider": "meta", "from": CUSTOMER, "name": "Lucía", "text": "Hola, ¿tienen envío gratis?"},
    )

    assert status == 200
    assert answer["leadline_status"] == 200
    [webhook] = receiver.on("/webhooks/meta")
    assert webhook.headers["X-Hub-Signature-256"] == meta_signature(META_SECRET, webhook.body)
    assert b"\\u00ed" in webhook.body  # non-ASCII escaped, as Meta sends it
    value = webhook.json()["entry"][0]["changes"][0]["value"]
    assert value["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
    assert value["contacts"] == [{"profile": {"name": "Lucía"}, "wa_id": CUSTOMER_DIGITS}]
    [message] = value["messages"]
    assert message["id"] == answer["message_id"]
    assert (message["from"], message["type"], message["text"]) == (
        CUSTOMER_DIGITS,
        "text",
        {"body": "Hola, ¿tienen envío gratis?"},
    )


async def test_injected_meta_image_can_be_downloaded_in_two_steps(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    content = b"\xff\xd8\xff fake jpeg"
    status, answer = await control(
        session,
        sandbox,
        "POST",
        "/inbound",
        {
            "provider": "meta",
            "from": CUSTOMER,
            "kind": "image",
            "text": "Este es el modelo",
            "media": {"mime_type": "image/jpeg", "content_base64": base64.b64encode(content).decode()},
            "reply_to": "wamid.OUT0042",
        },
    )
    assert status == 200
    message = receiver.received[0].json()["entry"][0]["changes"][0]["value"]["messages"][0]
    assert message["type"] == "image"
    assert message["context"] == {"from": "15550001234", "id": "wamid.OUT0042"}
    media_id = message["image"]["id"]
    assert media_id == answer["media"][0]["id"]
    assert message["image"]["caption"] == "Este es el modelo"

    bearer = {"Authorization": f"Bearer {META_TOKEN}"}
    async with session.get(f"{sandbox.meta_api_base_url}/{media_id}", headers=bearer) as response:
        assert response.status == 200
        info = await response.json()
    assert (info["id"], info["mime_type"], info["file_size"]) == (media_id, "image/jpeg", len(content))
    async with session.get(info["url"]) as response:
        assert response.status == 401  # the CDN wants the bearer token too
    async with session.get(info["url"], headers=bearer) as response:
        assert response.status == 200
        assert await response.read() == content


async def test_injected_twilio_message_is_signed_against_the_public_url(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    status, answer = await control(
        session,
        sandbox,
        "POST",
        "/inbound",
        {
            "provider": "twilio",
            "from": CUSTOMER,
            "name": "Lucía Ramos",
            "kind": "button",
            "button": {"payload": "confirm_yes", "text": "Sí, confirmar"},
            "reply_to": "SM6f708192a3b4c5d6e7f8091a2b3c4d5e",
        },
    )

    assert (status, answer["leadline_status"]) == (200, 200)
    [webhook] = receiver.on("/webhooks/twilio")
    params = webhook.form()
    assert webhook.headers["X-Twilio-Signature"] == twilio_signature(
        TWILIO_TOKEN, f"{PUBLIC_URL}/webhooks/twilio", params
    )
    form = dict(params)
    assert form["MessageSid"] == answer["message_id"]
    assert (form["From"], form["To"], form["WaId"]) == (f"whatsapp:{CUSTOMER}", f"whatsapp:{BUSINESS}", CUSTOMER_DIGITS)
    assert (form["ProfileName"], form["ButtonPayload"], form["ButtonText"]) == (
        "Lucía Ramos",
        "confirm_yes",
        "Sí, confirmar",
    )
    assert form["OriginalRepliedMessageSid"] == "SM6f708192a3b4c5d6e7f8091a2b3c4d5e"


async def test_injected_twilio_media_is_downloadable_with_basic_auth(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    status, answer = await control(
        session, sandbox, "POST", "/inbound", {"provider": "twilio", "from": CUSTOMER, "kind": "document"}
    )
    assert status == 200
    form = dict(receiver.received[0].form())
    assert (form["NumMedia"], form["MediaContentType0"]) == ("1", "application/pdf")
    assert form["MessageSid"].startswith("MM")
    assert form["MediaUrl0"] == answer["media"][0]["url"]

    async with session.get(form["MediaUrl0"]) as response:
        assert response.status == 401
    auth = {"Authorization": basic_auth(TWILIO_SID, TWILIO_TOKEN)}
    async with session.get(form["MediaUrl0"], headers=auth) as response:
        assert response.status == 200
        assert response.content_type == "application/pdf"
        assert await response.read()


async def test_a_repeated_injection_delivers_the_same_webhook_again(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    status, answer = await control(
        session, sandbox, "POST", "/inbound", {"provider": "meta", "from": CUSTOMER, "text": "hola", "repeat": 2}
    )

    assert (status, answer["leadline_statuses"]) == (200, [200, 200])
    first, second = receiver.received
    assert first.body == second.body


async def test_injection_reports_an_unreachable_leadline(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    running = await start_sandbox(
        SandboxConfig(
            leadline_url=f"http://127.0.0.1:{closed_port}",
            meta=(MetaSandboxChannel("m", PHONE_NUMBER_ID, BUSINESS, META_SECRET, META_TOKEN),),
        )
    )
    try:
        status, answer = await control(
            session, running, "POST", "/inbound", {"provider": "meta", "from": CUSTOMER, "text": "hola"}
        )
    finally:
        await running.close()

    assert status == 502
    assert answer["leadline_status"] is None
    assert answer["error"]


# --------------------------------------------------------------------------------------------
# The control API itself


async def test_recorded_requests_can_be_filtered_and_cleared(
    meta: MetaClient, twilio: TwilioClient, sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    await meta.send_text(CUSTOMER, "uno")
    await twilio.send_text(CUSTOMER, "dos")

    status, everything = await control(session, sandbox, "GET", "/requests")
    assert status == 200
    assert [r["provider"] for r in everything["requests"]] == ["meta", "twilio"]
    assert [r["provider"] for r in await provider_requests(session, sandbox, "twilio")] == ["twilio"]

    assert (await control(session, sandbox, "DELETE", "/requests")) == (200, {"cleared": 2})
    assert (await control(session, sandbox, "GET", "/requests")) == (200, {"requests": []})


@pytest.mark.parametrize(
    "body",
    [
        {"provider": "meta", "mode": "error"},  # error without a code
        {"provider": "nobody", "mode": "down"},
        {"provider": "meta", "mode": "sulk"},
    ],
)
async def test_invalid_fault_requests_are_refused(
    sandbox: RunningSandbox, session: aiohttp.ClientSession, body: dict[str, Any]
) -> None:
    status, answer = await control(session, sandbox, "POST", "/faults", body)

    assert status == 400
    assert answer["error"] == "invalid request"


async def test_the_fake_graph_api_refuses_malformed_sends(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.meta_api_base_url}/{PHONE_NUMBER_ID}/messages"
    bearer = {"Authorization": f"Bearer {META_TOKEN}"}
    for body in (
        {"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}},
        {"messaging_product": "whatsapp", "to": CUSTOMER_DIGITS, "text": {"body": "x"}},
        {"messaging_product": "whatsapp", "to": CUSTOMER_DIGITS, "type": "hologram", "hologram": {}},
        {
            "messaging_product": "whatsapp",
            "to": CUSTOMER_DIGITS,
            "type": "audio",
            "audio": {"link": "https://a", "caption": "x"},
        },
    ):
        async with session.post(url, data=orjson.dumps(body), headers=bearer) as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert error["code"] == 100, body
            assert error["fbtrace_id"]


async def test_the_fake_twilio_api_needs_a_body_media_or_content(
    sandbox: RunningSandbox, session: aiohttp.ClientSession
) -> None:
    url = f"{sandbox.twilio_api_base_url}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    auth = {"Authorization": basic_auth(TWILIO_SID, TWILIO_TOKEN)}
    async with session.post(
        url, data={"To": f"whatsapp:{CUSTOMER}", "From": f"whatsapp:{BUSINESS}"}, headers=auth
    ) as response:
        assert response.status == 400
        assert (await response.json())["code"] == 21619
    async with session.post(
        url, data={"To": CUSTOMER, "From": f"whatsapp:{BUSINESS}", "Body": "x"}, headers=auth
    ) as response:
        assert (await response.json())["code"] == 21211


# --------------------------------------------------------------------------------------------
# The sandbox's webhooks are what leadline's own translators accept


def _raw(webhook: ReceivedWebhook) -> RawRequest:
    query = f"?{webhook.query}" if webhook.query else ""
    return RawRequest(
        method="POST",
        path=webhook.path,
        query_string=webhook.query,
        headers={name.lower(): value for name, value in webhook.headers.items()},
        body=webhook.body,
        public_url=f"{PUBLIC_URL}{webhook.path}{query}",
    )


async def test_sandbox_webhooks_translate_into_leadline_events(
    meta: MetaClient,
    twilio: TwilioClient,
    sandbox: RunningSandbox,
    session: aiohttp.ClientSession,
    receiver: Receiver,
    meta_channel_config: MetaChannelConfig,
    twilio_channel_config: TwilioChannelConfig,
) -> None:
    meta_id = await meta.send_text(CUSTOMER, "hola")
    twilio_id = await twilio.send_text(CUSTOMER, "hola")
    await flush(session, sandbox)
    for provider in ("meta", "twilio"):
        await control(
            session,
            sandbox,
            "POST",
            "/inbound",
            {"provider": provider, "from": CUSTOMER, "name": "Lucía", "text": "Hola"},
        )

    translators: dict[str, WebhookTranslator] = {
        "/webhooks/meta": MetaWebhookTranslator.for_channels([meta_channel_config]),
        "/webhooks/twilio": TwilioWebhookTranslator.for_channels([twilio_channel_config]),
    }
    events = [
        event for webhook in receiver.received for event in translators[webhook.path].translate(_raw(webhook)).events
    ]

    statuses = [(e.provider, e.provider_message_id, e.status) for e in events if isinstance(e, StatusUpdate)]
    assert statuses == [
        ("meta", meta_id, DeliveryStatus.SENT),
        ("meta", meta_id, DeliveryStatus.DELIVERED),
        ("meta", meta_id, DeliveryStatus.READ),
        ("twilio", twilio_id, DeliveryStatus.SENT),
        ("twilio", twilio_id, DeliveryStatus.DELIVERED),
        ("twilio", twilio_id, DeliveryStatus.READ),
    ]
    messages = [e for e in events if isinstance(e, InboundMessage)]
    assert [(m.provider, m.sender, m.business_number, m.text, m.profile_name) for m in messages] == [
        ("meta", CUSTOMER, BUSINESS, "Hola", "Lucía"),
        ("twilio", CUSTOMER, BUSINESS, "Hola", "Lucía"),
    ]


def test_sandbox_config_impersonates_leadlines_own_channels() -> None:
    config = config_from_mapping(
        {
            "public_url": PUBLIC_URL,
            "channels": [
                {
                    "name": "meta-main",
                    "provider": "meta",
                    "business_number": BUSINESS,
                    "phone_number_id": PHONE_NUMBER_ID,
                    "app_secret": META_SECRET,
                    "verify_token": "verify-me",
                    "access_token": META_TOKEN,
                },
                {
                    "name": "twilio-main",
                    "provider": "twilio",
                    "business_number": BUSINESS,
                    "account_sid": TWILIO_SID,
                    "auth_token": TWILIO_TOKEN,
                    "messaging_service_sid": SERVICE_SID,
                },
            ],
        }
    )

    sandbox_config = SandboxConfig.from_leadline(config, "http://127.0.0.1:8000", status_mode="manual")

    assert sandbox_config.webhook_base_url == "http://127.0.0.1:8000"
    assert sandbox_config.public_base_url == PUBLIC_URL
    assert sandbox_config.status_mode == "manual"
    assert sandbox_config.meta == (
        MetaSandboxChannel("meta-main", PHONE_NUMBER_ID, BUSINESS, META_SECRET, META_TOKEN, "310000000000001"),
    )
    assert sandbox_config.twilio == (
        TwilioSandboxChannel("twilio-main", TWILIO_SID, TWILIO_TOKEN, BUSINESS, SERVICE_SID),
    )
