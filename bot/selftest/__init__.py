"""``bot selftest``: the first run against the real Cloudflare app and the real bucket.

A clinic runs it before its first consultation, with the same settings ``bot record``
reads (``BOT_REALTIME_*``, ``BOT_STORAGE_*``, ``--config``). It publishes one synthetic
participant to the app, records it through the SFU with the real recorder, lets the
recorder upload and verify the file in the bucket, lists the bucket to see it there, and
deletes what it wrote. Each step is reported with its outcome and timing, so a failure
says which half (Cloudflare or the store) to look at, and the report of a passing run is
the evidence that turns the assumed rows of ``docs/cloudflare-conformance.md`` into
observed ones.

Two steps are observations, never failures: RTX needs packet loss to appear, and the
synthetic publisher sends a single simulcast layer. A failing step gives one line (what
failed, what to check), never a traceback, and every configured secret is scrubbed from
it in case a server echoed one back.

The recording goes to its own key prefix (``selftest/``) and a temporary spool: a bucket
lock on ``consultations/`` would make a test object undeletable, and ``bot recover``
must never find a selftest spool among the real ones. The publisher is passed in (the
CLI builds the synthetic participant of ``bot.synthetic``) so this package never imports
it.

The modules, in the order of a run: ``report`` (the steps, their lines, the verdict),
``runner`` (the run and its ``config`` step), ``publish`` (``auth``, ``publish``),
``record`` (the real recorder: ``pull`` to ``upload``), ``bucket`` (``verify``,
``cleanup``). May import the foundation, ``bot.realtime``, ``bot.rtc``, ``bot.storage``
and ``bot.recording``.
"""

from bot.selftest.publish import Publisher, PublisherFactory
from bot.selftest.report import SelftestReport, Step, config_failure
from bot.selftest.runner import DEFAULT_DURATION, run_selftest

__all__ = [
    "DEFAULT_DURATION",
    "Publisher",
    "PublisherFactory",
    "SelftestReport",
    "Step",
    "config_failure",
    "run_selftest",
]
