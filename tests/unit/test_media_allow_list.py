"""Which URLs inbound media may be fetched from: the provider's own hosts, over HTTPS, and the configured API."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from leadline.media.records import clean_mime_type
from leadline.media.storage import LocalMediaStorage
from leadline.providers.base import ErrorClass, ProviderError
from leadline.providers.media import AllowList
from leadline.providers.meta.config import MetaChannelConfig
from leadline.providers.meta.media import meta_media_allow_list
from leadline.providers.twilio.config import TwilioChannelConfig
from leadline.providers.twilio.media import twilio_media_allow_list


def meta(api_base_url: str | None = None) -> AllowList:
    channel = MetaChannelConfig(
        name="meta-main",
        business_number="+15550001234",
        phone_number_id="420000000000002",
        app_secret=SecretStr("secret"),
        verify_token=SecretStr("token"),
        access_token=SecretStr("access"),
        api_base_url=api_base_url,
    )
    return meta_media_allow_list(channel)


def twilio(api_base_url: str | None = None) -> AllowList:
    channel = TwilioChannelConfig(
        name="twilio-main",
        business_number="+15550001234",
        account_sid="AC00000000000000000000000000000001",
        auth_token=SecretStr("12345678901234567890123456789012"),
        api_base_url=api_base_url,
    )
    return twilio_media_allow_list(channel)


def allowed(allow: AllowList, url: str) -> bool:
    try:
        allow.check(url)
    except ProviderError as error:
        assert (error.error_class, error.code) == (ErrorClass.BAD_REQUEST, "host_not_allowed")
        return False
    return True


@pytest.mark.parametrize(
    "url",
    [
        "https://graph.facebook.com/v25.0/1029384756102938",
        "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1029384756102938&ext=1767225610",
        "https://LOOKASIDE.fbsbx.com./whatsapp_business/attachments/?mid=1",
        "https://lookaside.fbsbx.com:443/whatsapp_business/attachments/",
        "https://scontent.whatsapp.net/v/t62.7118-24/abc",
        "https://mmg.whatsapp.net/d/f/abc.enc",
        "https://scontent-mia3-1.xx.fbcdn.net/v/t45.1600-4/abc.jpg",
    ],
)
def test_meta_media_hosts_are_allowed(url: str) -> None:
    assert allowed(meta(), url)


@pytest.mark.parametrize(
    "url",
    [
        "http://lookaside.fbsbx.com/whatsapp_business/attachments/",  # not HTTPS
        "https://lookaside.fbsbx.com:8443/whatsapp_business/attachments/",  # not the default port
        "https://fbsbx.com.attacker.example/",
        "https://attackerfbsbx.com/",
        "https://fbcdn.net/",  # the apex of a wildcard is not one of its subdomains
        "https://lookaside.fbsbx.com@attacker.example/",  # the host is attacker.example
        "https://user:pass@lookaside.fbsbx.com/",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://127.0.0.1:5432/",
        "http://localhost/",
        "http://[::1]/",
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",  # another provider's host
        "file:///etc/passwd",
        "/v25.0/1029384756102938",
        "not a url",
        "",
    ],
)
def test_other_urls_are_refused_for_meta(url: str) -> None:
    assert not allowed(meta(), url)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        "https://media.twiliocdn.com/AC1/abc",
        "https://mms.twiliocdn.com/AC1/abc?Expires=1&Signature=x",
        "https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC1/abc",
    ],
)
def test_twilio_media_hosts_are_allowed(url: str) -> None:
    assert allowed(twilio(), url)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        "https://api.twilio.com.attacker.example/2010-04-01/",
        "https://s3-external-1.amazonaws.com/attacker-bucket/abc",  # a shared host: only Twilio's bucket
        "https://s3-external-1.amazonaws.com/media.twiliocdn.com.attacker/abc",
        "https://lookaside.fbsbx.com/whatsapp_business/attachments/",
        "http://10.0.0.5/",
    ],
)
def test_other_urls_are_refused_for_twilio(url: str) -> None:
    assert not allowed(twilio(), url)


def test_the_configured_api_base_url_adds_exactly_its_origin() -> None:
    sandbox = meta("http://127.0.0.1:8089/meta/v25.0")

    assert allowed(sandbox, "http://127.0.0.1:8089/meta/lookaside/1?mid=1")
    assert allowed(sandbox, "https://lookaside.fbsbx.com/whatsapp_business/attachments/")
    assert not allowed(sandbox, "http://127.0.0.1:8090/meta/lookaside/1")  # another port on the same host
    assert not allowed(sandbox, "https://127.0.0.1:8089/")  # another scheme
    assert not allowed(sandbox, "http://localhost:8089/")  # another name for it
    assert not allowed(meta(), "http://127.0.0.1:8089/meta/lookaside/1")


def test_a_base_url_with_a_default_port_matches_urls_that_spell_it_out() -> None:
    proxy = twilio("https://twilio-proxy.internal.example")

    assert allowed(proxy, "https://twilio-proxy.internal.example:443/2010-04-01/Media/ME1")
    assert not allowed(proxy, "http://twilio-proxy.internal.example/2010-04-01/Media/ME1")


# --------------------------------------------------------------------------------------------
# Local storage


async def test_local_storage_keeps_content_under_its_hash_and_refuses_other_keys(tmp_path: Path) -> None:
    storage = LocalMediaStorage(tmp_path)
    staged = storage.staging_file()
    staged.write_bytes(b"hello")
    digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

    key = await storage.put(staged, digest)

    assert key == f"sha256/2c/{digest}"
    assert not staged.exists()
    chunks = await storage.open(key)
    assert chunks is not None and b"".join([chunk async for chunk in chunks]) == b"hello"
    assert await storage.open("../../etc/passwd") is None
    assert await storage.open(f"sha256/2c/{digest}/../../../x") is None
    assert await storage.open("sha256/00/" + "0" * 64) is None


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("image/jpeg", "image/jpeg"),
        ("audio/ogg; codecs=opus", "audio/ogg; codecs=opus"),
        (
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        ('text/plain; charset="utf-8"', 'text/plain; charset="utf-8"'),
        ("image/" + "x" * 200, None),
        ("text/html\r\nSet-Cookie: a=b", None),
        ("jpeg", None),
        ("", None),
        (None, None),
    ],
)
def test_only_plain_content_types_are_kept(given: str | None, kept: str | None) -> None:
    assert clean_mime_type(given) == kept
