"""Inbound media kept in an S3-compatible bucket (``media.storage = "s3"``), over real HTTP.

The bucket is served by moto's S3 server, a separate HTTP server speaking S3's REST API and checking
SigV4 signatures' form; leadline reaches it only through ``s3_endpoint_url``, as it would MinIO or R2.
The media comes from the provider sandbox, as in test_media.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer
from test_media import Scripted, Stack, get_media, inject, only_media

from conftest import base_config, running_app
from leadline.config import config_from_mapping
from leadline.sandbox.config import SandboxConfig
from leadline.sandbox.server import start_sandbox

BUCKET = "leadline-media"
PREFIX = "customers/"
KEYS = {"s3_access_key_id": "test-access-key", "s3_secret_access_key": "test-secret-key"}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


async def objects(s3_url: str) -> dict[str, bytes]:
    session = get_session()
    async with session.create_client("s3", endpoint_url=s3_url, region_name="us-east-1", **_credentials()) as s3:
        listed = await s3.list_objects_v2(Bucket=BUCKET)
        found = {}
        for item in listed.get("Contents", []):
            body = (await s3.get_object(Bucket=BUCKET, Key=item["Key"]))["Body"]
            async with body:
                found[item["Key"]] = await body.read()
        return found


async def make_bucket(s3_url: str) -> None:
    session = get_session()
    async with session.create_client("s3", endpoint_url=s3_url, region_name="us-east-1", **_credentials()) as s3:
        existing = {b["Name"] for b in (await s3.list_buckets())["Buckets"]}
        if BUCKET in existing:
            for key in await objects(s3_url):
                await s3.delete_object(Bucket=BUCKET, Key=key)
        else:
            await s3.create_bucket(Bucket=BUCKET)


def _credentials() -> dict[str, str]:
    return {"aws_access_key_id": KEYS["s3_access_key_id"], "aws_secret_access_key": KEYS["s3_secret_access_key"]}


@pytest.fixture
async def stack(database_url: str, tmp_path: Path, s3_url: str) -> AsyncIterator[Stack]:
    await make_bucket(s3_url)
    media = {
        "storage": "s3",
        "storage_dir": str(tmp_path / "media"),
        "s3_bucket": BUCKET,
        "s3_prefix": PREFIX,
        "s3_endpoint_url": s3_url,
        **KEYS,
    }
    data = base_config(database_url, media=media)
    sandbox = await start_sandbox(SandboxConfig.from_leadline(config_from_mapping(data), "http://127.0.0.1:9"))
    for channel in data["channels"]:
        if channel["name"] in ("meta-main", "twilio-main"):
            channel["api_base_url"] = (
                sandbox.meta_api_base_url if channel["provider"] == "meta" else sandbox.twilio_api_base_url
            )
    try:
        async with running_app(config_from_mapping(data)) as app, httpx.AsyncClient(timeout=10.0) as http:
            sandbox.sandbox.config = dataclasses.replace(sandbox.sandbox.config, leadline_url=app.url)
            yield Stack(app, sandbox, Scripted(), Scripted(), http, tmp_path / "media")
    finally:
        await sandbox.close()


@pytest.mark.parametrize("provider", ["meta", "twilio"])
async def test_media_is_uploaded_to_the_bucket_under_its_hash_and_served_from_it(
    stack: Stack, s3_url: str, provider: str
) -> None:
    content = f"{provider} factura ".encode() + bytes(range(256)) * 4
    # Meta's webhook names a document's file; Twilio's does not.
    named = {"filename": "factura.pdf"} if provider == "meta" else {}
    message_id = await inject(stack, provider, "document", content, "application/pdf", **named)

    await stack.app.drain_jobs()

    item = await only_media(stack, message_id)
    assert item["state"] == "stored", item
    digest = hashlib.sha256(content).hexdigest()
    assert await objects(s3_url) == {f"{PREFIX}sha256/{digest[:2]}/{digest}": content}
    served = await get_media(stack, item["id"])
    assert served.status_code == 200
    assert served.content == content
    assert served.headers["content-type"] == "application/pdf"
    assert served.headers["content-disposition"] == ('inline; filename="factura.pdf"' if named else "inline")
    # Nothing is kept locally but while downloading.
    assert list((stack.storage_dir / "staging").iterdir()) == []


async def test_the_same_bytes_twice_are_one_object(stack: Stack, s3_url: str) -> None:
    content = b"the same photo, sent twice " * 40
    first = await inject(stack, "meta", "image", content, "image/jpeg")
    second = await inject(stack, "twilio", "image", content, "image/jpeg")

    await stack.app.drain_jobs()

    assert len(await objects(s3_url)) == 1
    for message_id in (first, second):
        served = await get_media(stack, (await only_media(stack, message_id))["id"])
        assert served.content == content


async def test_an_object_gone_from_the_bucket_is_410_media_missing(stack: Stack, s3_url: str) -> None:
    message_id = await inject(stack, "meta", "image", b"soon gone " * 50, "image/jpeg")
    await stack.app.drain_jobs()
    await make_bucket(s3_url)  # empties it

    served = await get_media(stack, (await only_media(stack, message_id))["id"])

    assert served.status_code == 410
    assert served.json()["error"]["code"] == "media_missing"
