"""One selftest run, step by step: ``run_selftest``.

Owns the order of the run and what each half needs from the one before: the ``config``
step (the settings name an app and a real bucket), the client the publisher uses, the
temporary work directory, and handing the recording from the recorder's steps to the
bucket's. A failed step leaves the later ones skipped ("not reached"). May import the
foundation, ``bot.realtime``, ``bot.storage`` and its sibling modules.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bot.config import ConfigError, Settings
from bot.exitcodes import ExitCode
from bot.selftest.bucket import cleanup, verify
from bot.selftest.publish import (
    PublisherFactory,
    TimedClient,
    auth_and_publish,
    published_participant,
)
from bot.selftest.record import record
from bot.selftest.report import SelftestReport, Step, StepLog
from bot.storage.s3_store import S3Store

DEFAULT_DURATION = 10.0


async def run_selftest(
    settings: Settings,
    publisher: PublisherFactory,
    *,
    duration: float = DEFAULT_DURATION,
    keep: bool = False,
    on_step: Callable[[Step], None] = lambda step: None,
) -> SelftestReport:
    """Run every step against the configured app and bucket; ``on_step`` sees each line
    as soon as it is known, in report order."""
    return await _Selftest(settings, publisher, duration=duration, keep=keep, on_step=on_step).run()


class _Selftest:
    """One run: each step settles on ``log``; a failure leaves later ones skipped."""

    def __init__(
        self,
        settings: Settings,
        publisher: PublisherFactory,
        *,
        duration: float,
        keep: bool,
        on_step: Callable[[Step], None],
    ) -> None:
        self.settings = settings
        self.duration = duration
        self.keep = keep
        self.log = StepLog(settings, on_step)
        self._publisher = publisher

    async def run(self) -> SelftestReport:
        workdir = Path(tempfile.mkdtemp(prefix="bot-selftest-"))
        try:
            store = self._step_config()
            if store is not None:
                await self._call(store, workdir)
                await cleanup(self.log, store, keep=self.keep)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            self.log.finish()
        return self.log.report

    def _step_config(self) -> S3Store | None:
        """The store to check, or None (``config`` failed) when the settings do not name
        a Realtime app and a real bucket."""
        began = time.monotonic()
        realtime, storage = self.settings.realtime, self.settings.storage
        store: S3Store | None = None
        problem: str | None = None
        if not realtime.app_id or not realtime.app_secret.get_secret_value():
            problem = "set BOT_REALTIME_APP_ID and BOT_REALTIME_APP_SECRET (the Realtime app)"
        elif storage.backend != "s3":
            problem = (
                "the selftest checks the real bucket: set BOT_STORAGE_BACKEND=s3 with "
                "BOT_STORAGE_ENDPOINT_URL, BOT_STORAGE_BUCKET and its credentials"
            )
        else:
            try:
                store = S3Store(storage)
            except (ConfigError, ValueError) as exc:  # no endpoint or bucket; a bad URL
                problem = str(exc)
        if problem is not None:
            self.log.fail("config", problem, ExitCode.CONFIG, began=began)
            return None
        sse = "; SSE-C on" if storage.sse_c_key.get_secret_value() else ""
        self.log.settle(
            "config",
            "pass",
            f"app {realtime.app_id} at {realtime.base_url}; "
            f"bucket {storage.bucket} at {storage.endpoint_url}{sse}",
            began=began,
        )
        return store

    async def _call(self, store: S3Store, workdir: Path) -> None:
        """Publish, then record and store while the participant is live."""
        client = TimedClient.from_settings(self.settings.realtime)
        async with client:
            publisher = self._publisher(client)
            try:
                if await auth_and_publish(self.log, client, publisher):
                    result = await record(
                        self.log,
                        self.settings,
                        published_participant(publisher),
                        spool_dir=workdir / "spool",
                        duration=self.duration,
                    )
                    if result.upload is not None:
                        await verify(self.log, store, result)
            finally:
                await publisher.stop()
