"""Signed, retried webhook deliveries against a real local HTTP receiver."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from bot.config import WebhookSettings
from bot.observe.webhook import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Webhook,
    sign,
    verify,
)
from tests.e2e import WebhookReceiver, webhook_receiver

SECRET = "webhook-secret-0123456789"


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with webhook_receiver() as state:
        yield state


def _settings(url: str, **kw: object) -> WebhookSettings:
    return WebhookSettings(url=url, secret=SECRET, backoff_initial=0.01, **kw)  # type: ignore[arg-type]


async def test_retried_until_delivered_and_signed(receiver: WebhookReceiver) -> None:
    receiver.statuses = [503, 429]
    hook = Webhook(_settings(receiver.url))
    assert await hook.send("recording.started", {"recording_id": "r1"})
    await hook.aclose()
    assert len(receiver.seen) == 3
    ids = {headers[DELIVERY_HEADER] for headers, _ in receiver.seen}
    assert len(ids) == 1  # the same delivery id on every retry
    headers, body = receiver.seen[-1]
    assert headers[EVENT_HEADER] == "recording.started"
    assert verify(SECRET.encode(), headers[SIGNATURE_HEADER], body, now=time.time())
    assert not verify(b"another-secret", headers[SIGNATURE_HEADER], body, now=time.time())
    assert not verify(SECRET.encode(), headers[SIGNATURE_HEADER], body + b" ", now=time.time())
    assert not verify(SECRET.encode(), headers[SIGNATURE_HEADER], body, now=time.time() + 3600)
    payload = json.loads(body)
    assert payload["event"] == "recording.started" and payload["recording_id"] == "r1"
    assert SECRET not in body.decode()


async def test_client_errors_are_final(receiver: WebhookReceiver) -> None:
    receiver.statuses = [400]
    hook = Webhook(_settings(receiver.url))
    assert not await hook.send("recording.stopped", {})
    await hook.aclose()
    assert len(receiver.seen) == 1


async def test_gives_up_after_max_attempts_on_a_dead_receiver() -> None:
    hook = Webhook(_settings("http://127.0.0.1:9/hook", max_attempts=3, timeout=1))
    assert not await hook.send("recording.failed", {})
    await hook.aclose()


async def test_notify_never_waits_and_close_drains(receiver: WebhookReceiver) -> None:
    receiver.statuses = [500]
    hook = Webhook(_settings(receiver.url))
    began = time.monotonic()
    hook.notify("recording.completed", {"size": 1})
    assert time.monotonic() - began < 0.05
    await hook.aclose()
    assert receiver.got.is_set() and len(receiver.seen) == 2


async def test_close_cancels_what_cannot_finish_in_time() -> None:
    hook = Webhook(_settings("http://127.0.0.1:9/hook", max_attempts=20, drain_timeout=0.2))
    hook.notify("recording.completed", {})
    began = time.monotonic()
    await hook.aclose()
    assert time.monotonic() - began < 2.0


def test_signature_format() -> None:
    assert sign(b"k", 1700000000, b"{}").startswith("t=1700000000,v1=")
    assert not Webhook(WebhookSettings()).enabled
