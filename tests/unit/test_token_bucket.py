"""The per-channel token bucket, on a clock the test owns: pacing is checked by the waits it asks for,
never by the wall clock. Rates are powers of two, so that the fake clock's arithmetic is exact."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from conftest import base_config
from leadline.config import config_from_mapping
from leadline.pipeline import ratelimit
from leadline.pipeline.outbound import ChannelClients
from leadline.pipeline.ratelimit import TokenBucket


class FakeTime:
    """Monotonic time that moves only when the bucket sleeps; every sleep it asks for is kept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(ratelimit, "asyncio", SimpleNamespace(Lock=asyncio.Lock, sleep=fake.sleep))
    return fake


async def test_a_full_bucket_lets_a_burst_of_its_size_through_without_waiting(fake_time: FakeTime) -> None:
    bucket = TokenBucket(8)
    for _ in range(8):
        await bucket.acquire()
    assert fake_time.sleeps == []


async def test_sends_beyond_the_burst_are_paced_at_the_channels_rate(fake_time: FakeTime) -> None:
    bucket = TokenBucket(8)
    for _ in range(32):
        await bucket.acquire()

    # 8 at once, then 24 more at 8 per second: 3 s of waiting, one token's worth at a time.
    assert fake_time.sleeps == [0.125] * 24
    assert fake_time.now - 1000.0 == 3.0


async def test_an_idle_bucket_refills_only_up_to_its_burst(fake_time: FakeTime) -> None:
    bucket = TokenBucket(4, burst=4)
    for _ in range(4):
        await bucket.acquire()
    fake_time.now += 3600  # an hour idle

    for _ in range(5):
        await bucket.acquire()

    assert fake_time.sleeps == [0.25]


async def test_concurrent_senders_share_one_channels_tokens(fake_time: FakeTime) -> None:
    bucket = TokenBucket(4)
    await asyncio.gather(*(bucket.acquire() for _ in range(12)))
    assert fake_time.sleeps == [0.25] * 8


async def test_rate_zero_never_waits(fake_time: FakeTime) -> None:
    bucket = TokenBucket(0)
    for _ in range(10_000):
        await bucket.acquire()
    assert fake_time.sleeps == []


def test_each_channel_has_its_own_bucket_at_its_configured_rate() -> None:
    data = base_config("sqlite+aiosqlite:///unused.db")
    data["channels"][0]["rate_limit_per_second"] = 5
    data["channels"][2]["rate_limit_per_second"] = 0
    clients = ChannelClients(config_from_mapping(data))

    meta, second, twilio = (clients.limiter(n) for n in ("meta-main", "meta-second", "twilio-main"))

    assert (meta.rate, meta.capacity) == (5, 5)
    assert second.rate == 80  # the default: Meta's per-number throughput
    assert twilio.rate == 0
    assert clients.limiter("meta-main") is meta
