"""Optional notifications to the orchestrator: started, stopped, completed, failed.

Each delivery is a JSON POST signed with HMAC-SHA256 so the receiver can trust it came
from a recorder holding the shared secret and was not replayed later:

    X-Recorder-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">

``X-Recorder-Event`` names the event and ``X-Recorder-Delivery`` is a per-event id that
stays the same across retries, so a receiver can drop duplicates. Transport errors, 429
and 5xx are retried with exponential backoff and jitter; other 4xx are final. ``notify``
never blocks the recording: deliveries run as background tasks, and ``aclose`` gives them
a bounded time to finish before the recorder exits.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import structlog

from bot import __version__
from bot.config import WebhookSettings

log = structlog.get_logger("bot.observe.webhook")

SIGNATURE_HEADER: Final = "X-Recorder-Signature"
EVENT_HEADER: Final = "X-Recorder-Event"
DELIVERY_HEADER: Final = "X-Recorder-Delivery"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, *, now: float, tolerance: float = 300) -> bool:
    """The receiver's check (used by the tests; a reference for implementers)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class Webhook:
    """Delivers events to ``settings.url``; a no-op when no URL is configured."""

    def __init__(
        self, settings: WebhookSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._settings = settings
        self._secret = settings.secret.get_secret_value().encode("utf-8")
        self._client = (
            httpx.AsyncClient(
                timeout=settings.timeout,
                transport=transport,
                headers={"User-Agent": f"consultation-recorder/{__version__}"},
                follow_redirects=False,
            )
            if settings.url
            else None
        )
        self._pending: set[asyncio.Task[bool]] = set()

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def notify(self, event: str, payload: Mapping[str, Any]) -> None:
        """Deliver in the background; returns at once."""
        if self._client is None:
            return
        task = asyncio.create_task(self.send(event, payload), name=f"webhook-{event}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def send(self, event: str, payload: Mapping[str, Any]) -> bool:
        """Deliver one event with retries; True once the receiver answered 2xx.

        ``payload`` must hold opaque ids and numbers only: it leaves the machine.
        """
        if self._client is None:
            return False
        settings = self._settings
        delivery = uuid.uuid4().hex
        body = json.dumps(
            {
                "event": event,
                "delivery_id": delivery,
                "sent_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                **payload,
            },
            separators=(",", ":"),
        ).encode("utf-8")
        backoff = settings.backoff_initial
        for attempt in range(1, settings.max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                EVENT_HEADER: event,
                DELIVERY_HEADER: delivery,
                # Signed per attempt: a late retry still carries a fresh timestamp.
                SIGNATURE_HEADER: sign(self._secret, int(time.time()), body),
            }
            try:
                response = await self._client.post(settings.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                outcome, final = f"transport error {type(exc).__name__}", False
            else:
                if response.is_success:
                    log.info("webhook.delivered", webhook_event=event, attempt=attempt)
                    return True
                retryable = response.status_code == 429 or response.status_code >= 500
                outcome, final = f"HTTP {response.status_code}", not retryable
            if final or attempt == settings.max_attempts:
                log.error("webhook.failed", webhook_event=event, attempts=attempt, outcome=outcome)
                return False
            log.warning("webhook.retry", webhook_event=event, attempt=attempt, outcome=outcome)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, settings.backoff_max)
        return False

    async def aclose(self) -> None:
        """Give pending deliveries ``drain_timeout`` seconds, then cancel them."""
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=self._settings.drain_timeout)
            for task in late:
                task.cancel()
            if late:
                log.warning("webhook.abandoned", deliveries=len(late))
                await asyncio.gather(*late, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
