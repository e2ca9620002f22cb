"""Chromium participants: one browser process per participant, each with its own fake
camera and microphone files, publishing through the SFU's call page.

A browser per participant because Chromium's fake capture files are per process; two tabs
of one browser would show the same picture. Debian's ``/usr/bin/chromium`` is used, never
a browser downloaded by Playwright.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

import structlog
from playwright.async_api import Browser, Page, Playwright, async_playwright

from bot.config import Participant, TrackRef
from testbed.browser.media_files import FakeMedia

log = structlog.get_logger("testbed.browser")

CHROMIUM = Path("/usr/bin/chromium")
PUBLISH_TIMEOUT_S = 30.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Headless tabs are "hidden": without these Chromium throttles their timers and the
    # capture pipeline, and the fake camera stutters.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
)


class BrowserError(RuntimeError):
    """The page could not publish (its own error text is in the message)."""


@dataclass(frozen=True)
class VideoSendStats:
    width: int
    height: int
    frames_sent: int
    encoder: str


@dataclass(frozen=True)
class LayerSendStats:
    """One simulcast layer as the browser's encoder reports it."""

    rid: str
    ssrc: int
    width: int
    height: int
    frames_sent: int
    active: bool


class BrowserParticipant:
    """One published Chromium tab: its track references and test hooks."""

    def __init__(self, role: str, page: Page, published: dict[str, Any]) -> None:
        self.role = role
        self.page = page
        self.session_id: str = published["sessionId"]
        self.audio = TrackRef.parse(published["audio"])
        self.video = TrackRef.parse(published["video"])
        self.video_codec: str = published["videoCodec"] or ""

    def participant(self, participant_id: str) -> Participant:
        return Participant(id=participant_id, role=self.role, tracks=(self.audio, self.video))

    async def scale_video(self, factor: float) -> None:
        """``RTCRtpSender.setParameters`` with ``scaleResolutionDownBy`` on the camera."""
        await self.page.evaluate("factor => window.scaleVideo(factor)", factor)

    async def negotiated_sdp(self) -> tuple[str, str]:
        """The page's offer and the SFU's answer, as applied by the browser."""
        offer, answer = await self.page.evaluate(
            "() => [pc.localDescription.sdp, pc.remoteDescription.sdp]"
        )
        return str(offer), str(answer)

    async def video_stats(self) -> VideoSendStats:
        stats = await self.page.evaluate("() => window.videoSendStats()")
        return VideoSendStats(
            width=int(stats["width"]),
            height=int(stats["height"]),
            frames_sent=int(stats["framesSent"]),
            encoder=str(stats["encoder"]),
        )

    async def layer_stats(self) -> list[LayerSendStats]:
        """Per simulcast layer (empty without simulcast): rid, SSRC, size, frames sent."""
        layers = await self.page.evaluate("() => window.layerSendStats()")
        return [
            LayerSendStats(
                rid=str(layer["rid"]),
                ssrc=int(layer["ssrc"]),
                width=int(layer["width"]),
                height=int(layer["height"]),
                frames_sent=int(layer["framesSent"]),
                active=bool(layer["active"]),
            )
            for layer in layers
        ]

    async def set_layer_active(self, rid: str, active: bool) -> None:
        """Stop or restart one simulcast layer (``encodings[i].active``)."""
        await self.page.evaluate(
            "([rid, active]) => window.setLayerActive(rid, active)", [rid, active]
        )


class BrowserCall:
    """Chromium participants joining the call page of one SFU (``async with``)."""

    def __init__(self, sfu_base_url: str, *, executable: Path = CHROMIUM) -> None:
        parts = urlsplit(sfu_base_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._executable = executable
        self._playwright: Playwright | None = None
        self._browsers: list[Browser] = []

    async def __aenter__(self) -> BrowserCall:
        self._playwright = await async_playwright().start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for browser in reversed(self._browsers):
            await browser.close()
        self._browsers.clear()
        if self._playwright is not None:
            await self._playwright.stop()
            self._playwright = None

    async def join(
        self, role: str, media: FakeMedia, *, codec: str = "vp8", simulcast: Sequence[str] = ()
    ) -> BrowserParticipant:
        """Launch a browser playing ``media`` as its camera and microphone; returns once
        the page shows its published tracks and its transport is connected.

        ``simulcast``: rids of the camera's layers, full size first, each next one half
        the size (``("a", "b")`` as Orange Meets publishes; empty: one layer).
        """
        query = {"role": role, "codec": codec, "camera": f"{media.width}x{media.height}"}
        if simulcast:
            query["simulcast"] = ",".join(simulcast)
        return await self.open(role, media, f"{self._origin}/call?{urlencode(query)}")

    async def open(self, role: str, media: FakeMedia, url: str) -> BrowserParticipant:
        """Launch a browser playing ``media`` and load a publishing page at ``url``: one
        that, like the SFU's call page, shows its published tracks as JSON in ``#tracks``
        (or why it failed in ``#error``). Returns once it has."""
        if self._playwright is None:
            raise RuntimeError("BrowserCall is not started: use it with async with")
        browser = await self._playwright.chromium.launch(
            executable_path=str(self._executable),
            args=[
                *CHROMIUM_FLAGS,
                f"--use-file-for-fake-video-capture={media.video}",
                f"--use-file-for-fake-audio-capture={media.audio}",
            ],
        )
        self._browsers.append(browser)
        page = await browser.new_page()
        await page.goto(url)
        await page.wait_for_function(
            "() => document.getElementById('tracks').textContent"
            " || document.getElementById('error').textContent",
            timeout=PUBLISH_TIMEOUT_S * 1000,
        )
        error = await page.text_content("#error")
        if error:
            raise BrowserError(f"{role} page failed to publish: {error}")
        published = json.loads(await page.text_content("#tracks") or "{}")
        joined = BrowserParticipant(role, page, published)
        log.info("browser.published", role=role, codec=joined.video_codec)
        return joined
