"""``bot review``: the listing, the timeline picture, access, Range serving, and the page in
a real browser.

The fast tests build records by hand in a local store (a manifest, an audit trail whose
hash chain holds, a few bytes for the object). The browser test records a real
consultation into SeaweedFS under an SSE-C key (consent given late, a pause), opens the
page in Debian's Chromium, plays the recording to its end through the server, counts
the timeline's gaps against the manifest, and saves the README's screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from testbed.browser.driver import CHROMIUM
from testbed.s3 import LocalS3

from bot.cli import build_parser
from bot.config import StorageSettings
from bot.custody.chain import GENESIS, line_hash
from bot.exitcodes import ExitCode
from bot.manifest import (
    ConsentChange,
    Custody,
    Gap,
    Manifest,
    PartEntry,
    ParticipantEntry,
    StorageRecord,
    Verification,
)
from bot.recording import Recorder, RecordingResult
from bot.review import ReviewServer
from bot.review.catalog import Catalog, NotFound, safe_key
from bot.review.server import Unsatisfiable, byte_range
from bot.review.timeline import timeline_svg
from bot.storage import audit_key, manifest_key
from bot.storage.local_store import LocalStore
from bot.storage.s3_store import S3Store
from tests.e2e import recorder_settings

START = datetime(2026, 3, 4, 9, 30, tzinfo=UTC)
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "review.png"


# --- records made by hand --------------------------------------------------------------


def _trail(events: list[str]) -> tuple[bytes, str]:
    """Audit lines whose chain holds, and the last line's hash (what the manifest seals)."""
    lines, prev = [], GENESIS
    for seq, event in enumerate(events):
        raw = json.dumps({"time": "t", "seq": seq, "actor": "recorder", "event": event})
        raw = raw[:-1] + f', "prev": "{prev}"}}'
        lines.append(raw.encode())
        prev = line_hash(lines[-1])
    return b"\n".join(lines) + b"\n", prev


def _put(
    root: Path,
    recording_id: str,
    *,
    started: datetime = START,
    gaps: tuple[Gap, ...] = (),
    consent: tuple[ConsentChange, ...] = (),
) -> str:
    """A record in a local store; its key."""
    key = f"consultations/{started:%Y-%m-%d}/c-{recording_id}/{recording_id}.mp4"
    body = b"\0" * 1000
    trail, head = _trail(["recording.object", "fragment.written", "recording.paused"])
    check = Verification(
        size_ok=True,
        etag="match",
        sha256_method="full-read",
        decode_start_ok=True,
        decode_end_ok=True,
        verified_at=started + timedelta(seconds=12),
        seconds=0.1,
    )
    manifest = Manifest(
        consultation_id=f"c-{recording_id}",
        recording_id=recording_id,
        participants=(
            ParticipantEntry(id="c1", role="clinician"),
            ParticipantEntry(id="p1", role="patient"),
        ),
        started_at=started,
        duration_seconds=10.0,
        gaps=gaps,
        consent=consent,
        storage=StorageRecord(
            backend="local",
            object_key=key,
            size=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            part_size=5 * 1024 * 1024,
            parts=(PartEntry(number=1, size=len(body), etag="e"),),
            encryption="none",
            verification=check,
        ),
        custody=Custody(
            fragments=1,
            fragment_chain="a" * 64,
            audit_lines=3,
            audit_head=head,
            signature="unsigned",
        ),
    )
    (root / key).parent.mkdir(parents=True, exist_ok=True)
    (root / key).write_bytes(body)
    (root / manifest_key(key)).write_bytes(manifest.to_json())
    (root / audit_key(key)).write_bytes(trail)
    return key


GAPS = (
    Gap(participant_id="c1", kind="video", start=0.0, end=0.4, reason="no media yet (late join)"),
    Gap(participant_id="p1", kind="both", start=3.0, end=5.0, reason="paused"),
    Gap(participant_id="c1", kind="audio", start=3.0, end=5.0, reason="paused"),
    Gap(participant_id=None, kind="both", start=8.0, end=8.001, reason="<odd & reason>"),
)


def test_byte_ranges() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=0-", 100) == (0, 100)
    assert byte_range("bytes=10-19", 100) == (10, 20)
    assert byte_range("bytes=90-500", 100) == (90, 100)
    assert byte_range("bytes=-30", 100) == (70, 100)
    assert byte_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole object
    assert byte_range("items=0-1", 100) is None
    for unsatisfiable in ("bytes=100-", "bytes=20-10"):
        with pytest.raises(Unsatisfiable):
            byte_range(unsatisfiable, 100)


@pytest.mark.parametrize(
    "key",
    ["", "../etc/passwd", "a/../b", "/abs", ".uploads/x/key", "a//b", "a/b.mp4.manifest.json"],
)
def test_keys_from_the_browser_are_checked(key: str) -> None:
    with pytest.raises(NotFound):
        safe_key(key)


def test_the_timeline_draws_each_gap_once_with_its_reason() -> None:
    consent = (ConsentChange(participant_id="p1", consent="withdrawn", at=6.0),)
    manifest = Manifest(
        consultation_id="c",
        recording_id="r",
        participants=(
            ParticipantEntry(id="c1", role="clinician"),
            ParticipantEntry(id="p1", role="patient"),
        ),
        started_at=START,
        duration_seconds=10.0,
        gaps=GAPS,
        consent=consent,
    )
    svg = timeline_svg(manifest)
    reasons = re.findall(r'class="gap" data-reason="([^"]*)"', svg)
    assert reasons == ["no media yet (late join)", "paused", "paused", "&lt;odd &amp; reason&gt;"]
    assert svg.count('class="consent" data-consent="withdrawn"') == 1
    assert "everyone" in svg and "clinician · c1" in svg and "patient · p1" in svg
    assert "09:30:00" in svg  # the wall clock under the axis
    assert "<odd" not in svg


def test_the_list_is_newest_first_and_names_unreadable_manifests(tmp_path: Path) -> None:
    older = _put(tmp_path, "r-old", started=START)
    newer = _put(tmp_path, "r-new", started=START + timedelta(days=1))
    (tmp_path / "consultations" / "junk.mp4.manifest.json").write_text("{}")
    (tmp_path / ".uploads" / "u1").mkdir(parents=True)
    (tmp_path / ".uploads" / "u1" / "x.mp4.manifest.json").write_text("{}")
    settings = StorageSettings(local_dir=tmp_path)
    catalog = Catalog(settings, LocalStore(settings))
    listing = catalog.listing(limit=10)
    assert [e.key for e in listing.entries] == [newer, older]
    assert listing.unreadable == ("consultations/junk.mp4",)
    assert not listing.truncated
    assert catalog.listing(limit=1).truncated


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ReviewServer, str]]:
    key = _put(tmp_path, "r1", gaps=GAPS)
    server = ReviewServer(StorageSettings(local_dir=tmp_path), port=0)
    await server.start()
    try:
        yield server, key
    finally:
        await server.stop()


async def test_every_route_needs_the_token(served: tuple[ReviewServer, str]) -> None:
    server, key = served
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        for path in ("/", f"/recording?key={key}", f"/media?key={key}", "/review.css"):
            response = await anonymous.get(path)
            assert response.status_code == 401, path
            assert server.token not in response.text
        assert (await anonymous.get("/?token=wrong")).status_code == 401
    async with httpx.AsyncClient(base_url=server.url, cookies={server.cookie: "x"}) as wrong:
        assert (await wrong.get("/")).status_code == 401
    async with httpx.AsyncClient(base_url=server.url) as viewer:
        login = await viewer.get(f"/?token={server.token}")
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert "HttpOnly" in login.headers["set-cookie"]
        assert "SameSite=Strict" in login.headers["set-cookie"]
        page = await viewer.get("/")
        assert page.status_code == 200 and "r1" in page.text and server.token not in page.text
        assert "script-src" not in page.headers["content-security-policy"]
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert (await viewer.post("/")).status_code == 405  # read-only


async def test_the_object_is_served_by_range(served: tuple[ReviewServer, str]) -> None:
    server, key = served
    async with httpx.AsyncClient(base_url=server.url, cookies={server.cookie: server.token}) as c:
        whole = await c.get("/media", params={"key": key})
        assert whole.status_code == 200 and len(whole.content) == 1000
        assert whole.headers["accept-ranges"] == "bytes"
        part = await c.get("/media", params={"key": key}, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.headers["content-range"] == "bytes 10-19/1000"
        assert len(part.content) == 10
        late = await c.get("/media", params={"key": key}, headers={"Range": "bytes=5000-"})
        assert late.status_code == 416 and late.headers["content-range"] == "bytes */1000"
        head = await c.head("/media", params={"key": key})
        assert head.status_code == 200 and head.headers["content-length"] == "1000"
        assert (await c.get("/media", params={"key": "../../etc/passwd"})).status_code == 404
        assert (await c.get("/media", params={"key": "nothing/here.mp4"})).status_code == 404


async def test_the_record_page_shows_the_facts_and_a_broken_trail(
    served: tuple[ReviewServer, str], tmp_path: Path
) -> None:
    server, key = served
    async with httpx.AsyncClient(base_url=server.url, cookies={server.cookie: server.token}) as c:
        page = (await c.get("/recording", params={"key": key})).text
        assert page.count('class="gap"') == len(GAPS)
        assert "intact: 3 lines" in page and "present, 1000 bytes" in page
        assert "recording.paused" in page and "1 fragment.written events not listed" in page
        trail = tmp_path / audit_key(key)
        trail.write_bytes(trail.read_bytes().replace(b"recording.paused", b"recording.resumed"))
        (tmp_path / key).write_bytes(b"\0" * 999)
        page = (await c.get("/recording", params={"key": key})).text
        assert "DOES NOT MATCH" in page or "BROKEN" in page
        assert "present but 999 bytes; the manifest says 1000" in page


def test_plain_remote_s3_plays_from_a_presigned_url_and_sse_c_through_the_server() -> None:
    remote = StorageSettings(
        backend="s3", endpoint_url="https://acc.r2.cloudflarestorage.com", bucket="b"
    )
    assert ReviewServer(remote, port=0).redirects_media()
    sse_c = StorageSettings.model_validate(
        {**remote.model_dump(), "sse_c_key": base64.b64encode(os.urandom(32)).decode()}
    )
    assert not ReviewServer(sse_c, store=S3Store(sse_c), port=0).redirects_media()
    local = remote.model_copy(update={"endpoint_url": "http://127.0.0.1:9000"})
    assert not ReviewServer(local, port=0).redirects_media()


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(["review", "--port", "0", "--limit", "5"])
    assert (args.host, args.port, args.limit) == ("127.0.0.1", 0, 5)
    assert args.run.__name__ == "_cmd_review"


# --- a real recording in a real browser ---------------------------------------------------

CONSENT_AT = {"c1": 0.8, "p1": 1.8}
PAUSE, RESUME, DURATION = 3.5, 5.0, 7.0


async def _record(s3: LocalS3, tmp_path: Path) -> tuple[RecordingResult, StorageSettings]:
    """A consultation into SeaweedFS with SSE-C: consent given late, then a pause."""
    from testbed.stack import start_local_sfu

    call = await start_local_sfu()
    try:
        await call.publish("clinician", 1, participant_id="c1")
        await call.publish("patient", 2, participant_id="p1")
        storage = s3.storage_settings(
            spool_dir=tmp_path / "spool", sse_c_key=base64.b64encode(os.urandom(32)).decode()
        )
        settings = recorder_settings(
            call,
            tmp_path,
            storage=storage,
            consultation_id="c-review",
            max_duration=DURATION,
            require_consent=True,
            fps=15,
            video_preset="ultrafast",
        )
        recorder = Recorder(settings)
        running = asyncio.create_task(recorder.run())
        await asyncio.wait_for(recorder.started.wait(), 60)
        pipeline = recorder.pipeline
        assert pipeline is not None
        steps: list[tuple[float, Any]] = [
            (CONSENT_AT["c1"], lambda: recorder.privacy.set_consent("c1", True)),
            (CONSENT_AT["p1"], lambda: recorder.privacy.set_consent("p1", True)),
            (PAUSE, recorder.privacy.pause),
            (RESUME, recorder.privacy.resume),
        ]
        for at, action in steps:
            await asyncio.sleep(max(0.0, at - pipeline.now()))  # schedules the call
            action()
        return await asyncio.wait_for(running, 120), storage
    finally:
        await call.close()


PLAY_TO_END = """async () => {
    const video = document.getElementById('player');
    video.muted = true;
    const ended = new Promise((resolve, reject) => {
        video.addEventListener('ended', () => resolve(true), {once: true});
        video.addEventListener('error', () => reject(new Error('media error ' +
            (video.error && video.error.code))), {once: true});
    });
    video.playbackRate = 8;  // 7 s of recording in under a second of test
    await video.play();
    await ended;
    const quality = video.getVideoPlaybackQuality();
    return {ended: video.ended, currentTime: video.currentTime, duration: video.duration,
            width: video.videoWidth, frames: quality.totalVideoFrames};
}"""


async def _screenshot(page: Any, *, at: float) -> None:
    """The player (at a moment with both participants in the picture) and the timeline,
    for the README."""
    await page.evaluate(
        "t => new Promise(r => { const v = document.getElementById('player');"
        " v.addEventListener('seeked', r, {once: true}); v.currentTime = t; })",
        at,
    )
    bottom = await page.evaluate(
        "() => document.getElementById('timeline').getBoundingClientRect().bottom"
        " + window.scrollY + 12"
    )
    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(
        path=str(SCREENSHOT), clip={"x": 0, "y": 0, "width": 1180, "height": bottom}
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
)
async def test_the_review_page_in_chromium(s3: LocalS3, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    result, storage = await _record(s3, tmp_path)
    assert result.exit_code == ExitCode.OK and result.upload is not None, result.error
    manifest = result.upload.manifest
    assert manifest.storage is not None and manifest.storage.encryption == "sse-c"
    assert any(g.reason == "paused" for g in manifest.gaps), manifest.gaps
    assert manifest.video is not None
    width = manifest.video.width
    server = ReviewServer(storage, port=0)
    await server.start()
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM),
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--autoplay-policy=no-user-gesture-required",
                ],
            )
            try:
                page = await browser.new_page(viewport={"width": 1180, "height": 900})
                await page.goto(server.login_url)
                assert server.token not in page.url
                listed = await page.locator("table.recordings").inner_text()
                assert manifest.consultation_id in listed, listed
                link = page.locator("a.recording", has_text=manifest.recording_id)
                await link.click()
                await page.wait_for_selector("svg.timeline")
                assert await page.locator("svg .gap").count() == len(manifest.gaps)
                shown = await page.eval_on_selector_all(
                    "svg .gap", "gaps => gaps.map(g => g.dataset.reason).sort()"
                )
                assert shown == sorted(g.reason for g in manifest.gaps)
                assert await page.locator("#gaps tbody tr").count() == len(manifest.gaps)
                assert await page.locator("svg .consent").count() == len(manifest.consent) == 2
                assert "intact" in await page.locator("#custody").inner_text()
                played = await page.evaluate(PLAY_TO_END)
                assert played["ended"] and played["width"] == width, played
                assert played["frames"] > 0 and abs(played["duration"] - DURATION) < 1.0, played
                await _screenshot(page, at=PAUSE - 1.0)
            finally:
                await browser.close()
    finally:
        await server.stop()
