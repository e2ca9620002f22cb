"""A TCP proxy between a client and a server that a test can slow down, cut or redirect.

Storage fault tests put it between boto3 and SeaweedFS: ``rate`` throttles both directions
(a slow uplink to R2), ``cut()`` drops every connection and refuses new ones (the store is
unreachable, without stopping it), and ``target`` can be pointed at another server (a
store that does not know the recorder's credentials). It runs its own event loop in a
thread so that synchronous code (the uploader) and asyncio tests can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType

import structlog

log = structlog.get_logger("testbed.proxy")

_CHUNK = 16 * 1024


class _Throttle:
    """One shared budget of bytes per second for every connection in one direction."""

    def __init__(self) -> None:
        self.rate: float | None = None
        self._next = 0.0

    async def take(self, size: int) -> None:
        rate = self.rate
        if rate is None:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + size / rate
        if self._next > now:
            await asyncio.sleep(self._next - now)


class ThrottlingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; see the module docstring."""

    def __init__(self, target: tuple[str, int], *, rate: float | None = None) -> None:
        self.target = target
        self.bytes_up = 0
        """Client to server bytes forwarded so far."""
        self.bytes_down = 0
        self._up = _Throttle()
        self._down = _Throttle()
        self.rate = rate
        self._cut = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rate(self) -> float | None:
        """Bytes per second in each direction; None forwards at full speed."""
        return self._up.rate

    @rate.setter
    def rate(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError("rate must be positive (or None for no limit)")
        self._up.rate = self._down.rate = value

    # -- control, from any thread -------------------------------------------------------

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10) or self._server is None:
            raise RuntimeError("proxy did not start")

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def cut(self) -> None:
        """Close every open connection and refuse new ones until ``restore``."""
        self._cut = True
        log.info("proxy_cut", port=self.port)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close_all)

    def restore(self) -> None:
        self._cut = False

    def redirect(self, target: tuple[str, int]) -> None:
        """New connections go to ``target``; open ones are closed so none lingers."""
        self.target = target
        log.info("proxy_redirected", port=self.port, target_port=target[1])
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close_all)

    def __enter__(self) -> ThrottlingProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the proxy's own loop -------------------------------------------------------------

    def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # this thread's loop, also while shutting down
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._close_all()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            ready.set()
            loop.close()

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer, self._up, up=True),
            self._pipe(up_reader, writer, self._down, up=False),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        throttle: _Throttle,
        *,
        up: bool,
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await throttle.take(len(data))
                writer.write(data)
                await writer.drain()
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
