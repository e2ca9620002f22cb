"""Chromium publishers whose media is end-to-end encrypted by Orange Meets' own MLS worker.

Each publisher is a real browser (as in ``driver``) loading a page that this module serves
from its own small HTTP server, beside Orange's worker exactly as the app serves it:
``/e2ee/worker.js`` and ``/e2ee/wasm-pkg/*``, read unmodified from the interop folder
(``../shared/interop/orange-e2ee``, or ``$ORANGE_E2EE``). The page creates the worker
with ``new Worker('/e2ee/worker.js')``, opens its RTCPeerConnection with
``encodedInsertableStreams: true``, forces VP8 (and RTX) as Orange does, and hands each
sender's encoded streams to the worker (``encryptStream``); it publishes through this
server's ``/call/api/...``, relayed to the SFU's own app backend (which adds the app
secret), so the tracks are the SFU's like any other publisher's.

The room's part -- carrying MLS handshake messages between members -- is this module's,
done as Orange's room does it (``app/utils/e2ee.ts``): a newcomer's ``shareKeyPackage``
goes to every member as ``userJoined {keyPkg}``; the designated committer (the
longest-lived member) answers with ``sendMlsWelcome`` and ``sendMlsMessage``; the Welcome
goes to the newcomer as ``recvMlsWelcome {welcome, rtree, senderId}`` and the Commit to
every other member as ``recvMlsMessage {msg, senderId}``. ``admit`` does the same for a
KeyPackage from outside the browsers (the recorder's) and returns what that member needs.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import aiohttp
import structlog
from aiohttp import web
from playwright.async_api import Error as PlaywrightError

from testbed.browser.driver import CHROMIUM, BrowserCall, BrowserError, BrowserParticipant
from testbed.browser.media_files import FakeMedia
from testbed.orange import DEFAULT_INTEROP, INTEROP_ENV, Output, of_type

log = structlog.get_logger("testbed.browser.e2ee")

_STATIC = resources.files("testbed.browser") / "static"
_PROXY_TIMEOUT_S: Final = 30.0
_CONSOLE_LINES: Final = 200
TRANSFORMS: Final = ("streams", "script")
"""``streams``: ``createEncodedStreams`` posted to the worker as ``encryptStream`` (what
Orange does in a Chrome without script transforms); ``script``: ``RTCRtpScriptTransform``
with ``{operation: "encryptStream"}`` (what Orange's app picks wherever it exists)."""


def worker_folder() -> Path | None:
    """Orange's shipped worker folder, or None when it is not on this machine."""
    folder = Path(os.environ.get(INTEROP_ENV) or DEFAULT_INTEROP)
    if not (folder / "worker.js").is_file() or not (folder / "wasm-pkg").is_dir():
        return None
    return folder


class E2eeError(BrowserError):
    """The page's worker refused an event, or the relay got something it cannot use."""


@dataclass(frozen=True)
class Admission:
    """What the designated committer sent when it added a KeyPackage."""

    welcome: bytes
    """The MLSMessage(Welcome) for the newcomer."""
    ratchet_tree: bytes
    """The ratchet tree Orange sends beside the Welcome."""
    commit: bytes
    """The MLSMessage carrying the Commit, for everyone already in the group."""
    sender_id: str
    """The committer's member id (the room's ``senderId``)."""
    safety_number: bytes
    """The committer's safety number in the new epoch."""


class E2eePublisher:
    """One encrypting Chromium page: its published tracks and its Orange worker."""

    def __init__(self, member_id: str, browser: BrowserParticipant, console: list[str]) -> None:
        self.member_id = member_id
        self.browser = browser
        self.console = console
        """The page's (and its worker's) console lines, last ones kept."""

    @property
    def role(self) -> str:
        return self.browser.role

    async def event(self, kind: str, *, expect_output: bool = True, **fields: Any) -> list[Output]:
        """Post one event to the page's worker; returns what it posted back (bytes decoded).

        ``expect_output``: False for events the worker may rightly answer with nothing
        (``userJoined`` at a member that is not the committer): then a quiet second and a
        half is taken as "nothing"."""
        event: dict[str, Any] = {"type": kind}
        for name, value in fields.items():
            if isinstance(value, bytes | bytearray):
                event[name + "_b64"] = _b64encode(bytes(value))
            else:
                event[name] = value
        try:
            raw = await self.browser.page.evaluate(
                "([event, options]) => window.e2eeEvent(event, options)",
                [event, {"expectOutput": expect_output}],
            )
        except PlaywrightError as exc:  # the page's own message is in it
            tail = "\n".join(self.console[-15:])
            raise E2eeError(f"{self.member_id}: {kind}: {exc}\n{tail}") from None
        return [_decode_output(item) for item in raw]

    async def safety_number(self) -> bytes | None:
        """The last ``newSafetyNumber`` the worker posted (32 bytes), if any."""
        value = await self.browser.page.evaluate("() => window.e2eeSafetyNumber()")
        return None if value is None else _b64decode(value)

    async def worker_errors(self) -> list[str]:
        return [str(e) for e in await self.browser.page.evaluate("() => window.e2eeErrors()")]


class E2eePageServer:
    """The app's web server in miniature: the E2EE page, Orange's worker files, and the
    app backend's ``/call/api`` (forwarded to the SFU's, which holds the app secret)."""

    def __init__(self, sfu_base_url: str, folder: Path) -> None:
        parts = urlsplit(sfu_base_url)
        self._sfu_origin = f"{parts.scheme}://{parts.netloc}"
        self._folder = folder
        self._wasm_files = {p.name: p for p in (folder / "wasm-pkg").iterdir() if p.is_file()}
        self._runner: web.AppRunner | None = None
        self.origin = ""

    async def start(self) -> str:
        app = web.Application()
        app.cleanup_ctx.append(self._http_client)
        app.router.add_get("/e2ee-call", self._page)
        app.router.add_get("/e2ee-call/e2ee.js", self._script)
        app.router.add_get("/e2ee/worker.js", self._worker)
        app.router.add_get("/e2ee/wasm-pkg/{name}", self._wasm_pkg)
        app.router.add_route("*", "/call/api/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        # 127.0.0.1 is a secure context: getUserMedia and workers are allowed.
        self.origin = f"http://127.0.0.1:{port}"
        return self.origin

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _http_client(self, app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=_PROXY_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            self._http = http
            yield

    @staticmethod
    def _static(name: str, content_type: str) -> web.Response:
        return web.Response(
            body=(_STATIC / name).read_bytes(),
            content_type=content_type,
            headers={"Cache-Control": "no-store"},
        )

    async def _page(self, request: web.Request) -> web.Response:
        return self._static("e2ee.html", "text/html")

    async def _script(self, request: web.Request) -> web.Response:
        return self._static("e2ee.js", "application/javascript")

    async def _worker(self, request: web.Request) -> web.Response:
        return web.Response(
            body=(self._folder / "worker.js").read_bytes(), content_type="application/javascript"
        )

    async def _wasm_pkg(self, request: web.Request) -> web.Response:
        path = self._wasm_files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        kind = {".wasm": "application/wasm", ".js": "application/javascript"}.get(
            path.suffix, "application/octet-stream"
        )
        return web.Response(body=path.read_bytes(), content_type=kind)

    async def _relay(self, request: web.Request) -> web.Response:
        headers = {}
        if "Content-Type" in request.headers:
            headers["Content-Type"] = request.headers["Content-Type"]
        async with self._http.request(
            request.method,
            self._sfu_origin + request.path_qs,
            data=await request.read(),
            headers=headers,
        ) as upstream:
            return web.Response(
                body=await upstream.read(),
                status=upstream.status,
                content_type=upstream.content_type,
            )


CommitListener = Callable[[bytes, str], Any]
"""Called with (Commit, sender id) for every Commit the room relays, so a member outside
the browsers (the recorder) can follow the epochs; may return an awaitable."""


class E2eeCall:
    """Encrypting Chromium publishers in one MLS group, on a local SFU (``async with``).

    The first publisher creates the group (``initializeAndCreateGroup``); each next one
    shares its KeyPackage (``initialize``) and is admitted by the committer's Welcome.
    """

    def __init__(
        self,
        sfu_base_url: str,
        *,
        folder: Path | None = None,
        executable: Path = CHROMIUM,
        transform: str = "streams",
    ) -> None:
        found = folder or worker_folder()
        if found is None:
            raise FileNotFoundError(
                f"Orange's worker is not at {DEFAULT_INTEROP} (set ${INTEROP_ENV})"
            )
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}")
        self._server = E2eePageServer(sfu_base_url, found)
        self._browsers = BrowserCall(sfu_base_url, executable=executable)
        self._transform = transform
        self.members: list[E2eePublisher] = []
        """Browser members in the group, longest-lived first."""
        self.commit_listeners: list[CommitListener] = []

    async def __aenter__(self) -> E2eeCall:
        await self._server.start()
        await self._browsers.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._browsers.__aexit__(exc_type, exc, tb)
        finally:
            await self._server.close()

    @property
    def committer(self) -> E2eePublisher:
        """The designated committer: the longest-lived member (no one has left here)."""
        if not self.members:
            raise E2eeError("nobody is in the group yet")
        return self.members[0]

    async def join(
        self, role: str, media: FakeMedia, *, member_id: str | None = None
    ) -> E2eePublisher:
        """Launch an encrypting publisher; returns once it publishes and is in the group
        (it created it, or it was admitted by the committer's Welcome)."""
        member_id = member_id or role
        query = {
            "role": role,
            "camera": f"{media.width}x{media.height}",
            "fps": str(media.fps),
            "transform": self._transform,
        }
        console: list[str] = []
        browser = await self._browsers.open(
            role, media, f"{self._server.origin}/e2ee-call?{urlencode(query)}"
        )

        def keep(message: Any) -> None:
            console.append(f"{message.type}: {message.text}")
            del console[:-_CONSOLE_LINES]

        browser.page.on("console", keep)
        publisher = E2eePublisher(member_id, browser, console)
        if not self.members:
            outputs = await publisher.event("initializeAndCreateGroup", id=member_id)
            _one(outputs, "newSafetyNumber", member_id)
        else:
            outputs = await publisher.event("initialize", id=member_id)
            key_package = _one(outputs, "shareKeyPackage", member_id)["keyPkg"]
            admission = await self._add(key_package)
            joined = await publisher.event(
                "recvMlsWelcome",
                welcome=admission.welcome,
                rtree=admission.ratchet_tree,
                senderId=admission.sender_id,
            )
            safety = _one(joined, "newSafetyNumber", member_id)["hash"]
            if safety != admission.safety_number:
                raise E2eeError(f"{member_id} joined with another safety number than the group's")
        self.members.append(publisher)
        log.info("browser.e2ee_joined", member=member_id, members=len(self.members))
        return publisher

    async def admit(self, key_package: bytes) -> Admission:
        """Add a member from outside the browsers (the recorder) by its KeyPackage: every
        browser member hears ``userJoined``, the committer commits the Add, the others get
        its Commit. Returns the Welcome and ratchet tree for the newcomer."""
        return await self._add(key_package)

    async def safety_numbers(self) -> dict[str, bytes | None]:
        return {m.member_id: await m.safety_number() for m in self.members}

    async def _add(self, key_package: bytes) -> Admission:
        committer = self.committer
        answers = await asyncio.gather(
            *(
                member.event("userJoined", expect_output=member is committer, keyPkg=key_package)
                for member in self.members
            )
        )
        outputs = answers[self.members.index(committer)]
        welcome = _one(outputs, "sendMlsWelcome", committer.member_id)
        commit = _one(outputs, "sendMlsMessage", committer.member_id)
        admission = Admission(
            welcome=welcome["welcome"],
            ratchet_tree=welcome["rtree"],
            commit=commit["msg"],
            sender_id=str(commit["senderId"]),
            safety_number=_one(outputs, "newSafetyNumber", committer.member_id)["hash"],
        )
        for member, answer in zip(self.members, answers, strict=True):
            if member is not committer and answer:
                raise E2eeError(f"{member.member_id} answered userJoined: {answer}")
        followers = [m for m in self.members if m is not committer]
        followed = await asyncio.gather(
            *(
                m.event("recvMlsMessage", msg=admission.commit, senderId=admission.sender_id)
                for m in followers
            )
        )
        for member, answer in zip(followers, followed, strict=True):
            safety = _one(answer, "newSafetyNumber", member.member_id)["hash"]
            if safety != admission.safety_number:
                raise E2eeError(f"{member.member_id} disagrees on the safety number after a Commit")
        for listener in self.commit_listeners:
            result = listener(admission.commit, admission.sender_id)
            if asyncio.iscoroutine(result):
                await result
        return admission


def _one(outputs: list[Output], kind: str, member: str) -> Output:
    found = of_type(outputs, kind)
    if len(found) != 1:
        raise E2eeError(f"{member}'s worker posted {[o.type for o in outputs]}, not one {kind}")
    return found[0]


def _decode_output(raw: dict[str, Any]) -> Output:
    fields = {
        name.removesuffix("_b64"): _b64decode(value) if name.endswith("_b64") else value
        for name, value in raw.items()
        if name != "type"
    }
    return Output(str(raw["type"]), fields)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text)
