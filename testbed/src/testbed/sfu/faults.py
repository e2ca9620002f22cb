"""Misbehaviour on demand: the faults a test can make the local SFU show.

Three sorts. *Rules* answer the next N matching calls differently: an HTTP status with an
``errorCode`` instead of running the call (429, 500/503, ``retryable_transient_error``,
406, 410, 425), or one pulled track failing inside an HTTP 200 (``not_found_track_error``,
``empty_track_error``). *Actions* change the call's state now: expire a session, stop
forwarding a track's packets (its publisher left), garbage-collect a track. A *downlink
impairment* delays, jitters and reorders every packet the SFU sends to subscribers, as
netem would on the subscriber's link (this machine's kernel has no ``sch_netem``).

Tests reach this through ``LocalSfu.faults`` in-process, or ``POST /admin/faults`` (bearer
app secret) when the SFU runs in another process.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import structlog

log = structlog.get_logger("bot.sfu")

Operation = Literal[
    "new_session",
    "new_tracks",
    "renegotiate",
    "close_tracks",
    "update_tracks",
    "session_state",
]
TrackErrorCode = Literal["not_found_track_error", "empty_track_error"]

_TRACK_ERROR_TEXT: dict[str, str] = {
    "not_found_track_error": "injected fault: the track was not found",
    "empty_track_error": "injected fault: the track has no media yet",
}


@dataclass
class HttpFault:
    status: int
    error_code: str
    description: str
    operation: Operation | None
    session_id: str | None
    remaining: int

    def matches(self, operation: str, session_id: str | None) -> bool:
        return (self.operation is None or self.operation == operation) and (
            self.session_id is None or self.session_id == session_id
        )


@dataclass
class TrackFault:
    track_name: str
    error_code: TrackErrorCode
    session_id: str | None
    remaining: int


@dataclass(frozen=True)
class TrackFailure:
    """Why a pull of one track fails: its per-track ``errorCode`` and description."""

    code: str
    description: str


@dataclass(frozen=True)
class Impairment:
    """netem's ``delay D J reorder R``: each packet waits ``delay_s`` +- ``jitter_s``
    (uniform), except a ``reorder`` share sent at once, overtaking those waiting. Jitter
    wider than the packet interval reorders packets too, as on a real link.

    ``corrupt``: the share of RTP packets whose payload gets random bytes overwritten
    before encryption, as a broken publisher or middlebox would send them (netem's
    ``corrupt`` would hit the SRTP ciphertext, which the receiver just drops as loss).

    ``loss``: netem's ``loss``, the share of packets (RTP, RTX and RTCP alike) never sent,
    for tests that cannot move the recorder into a network namespace (a browser call).
    """

    delay_s: float = 0.0
    jitter_s: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    loss: float = 0.0

    def lost(self, rng: random.Random) -> bool:
        """Whether one packet is dropped on its way."""
        return bool(self.loss) and rng.random() < self.loss

    def hold(self, rng: random.Random) -> float:
        """How long one packet waits before it is sent."""
        if self.reorder and rng.random() < self.reorder:
            return 0.0
        return max(0.0, self.delay_s + rng.uniform(-self.jitter_s, self.jitter_s))

    def mangle(self, payload: bytes, rng: random.Random) -> bytes:
        """The payload, or (for a ``corrupt`` share) a copy with a few bytes garbled."""
        if not payload or not self.corrupt or rng.random() >= self.corrupt:
            return payload
        garbled = bytearray(payload)
        for _ in range(1 + len(garbled) // 64):
            garbled[rng.randrange(len(garbled))] = rng.randrange(256)
        return bytes(garbled)


class FaultTarget(Protocol):
    """What actions operate on (the session registry); each says whether it found its
    session or track."""

    def expire_now(self, session_id: str) -> bool: ...

    def stop_forwarding(self, session_id: str, track_name: str) -> bool: ...

    def collect_track(self, session_id: str, track_name: str) -> bool: ...


class FaultInjector:
    """The SFU's pending faults. Rules are consumed in the order they were added."""

    def __init__(self, target: Callable[[], FaultTarget | None]) -> None:
        self._target = target
        self._http: list[HttpFault] = []
        self._tracks: list[TrackFault] = []
        self.downlink: Impairment | None = None
        """What happens to every packet on its way to subscribers (None: nothing)."""

    # -- rules -----------------------------------------------------------------------

    def fail_requests(
        self,
        status: int,
        error_code: str,
        description: str = "injected fault",
        *,
        operation: Operation | None = None,
        session_id: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching API calls with ``status`` and ``error_code``
        (nothing of the call runs: a retry finds the state unchanged)."""
        if not 400 <= status <= 599:
            raise ValueError("a failing request needs an HTTP error status (400-599)")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._http.append(HttpFault(status, error_code, description, operation, session_id, times))

    def fail_track(
        self,
        track_name: str,
        error_code: TrackErrorCode,
        *,
        session_id: str | None = None,
        times: int = 1,
    ) -> None:
        """Fail the next ``times`` pulls of ``track_name`` inside an HTTP 200."""
        if error_code not in _TRACK_ERROR_TEXT:
            raise ValueError(f"unsupported per-track error code {error_code!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._tracks.append(TrackFault(track_name, error_code, session_id, times))

    def impair_downlink(
        self,
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
        reorder: float = 0.0,
        corrupt: float = 0.0,
        loss: float = 0.0,
    ) -> None:
        """Delay, jitter, reorder, corrupt and lose what subscribers receive from now on
        (see ``Impairment``); all zero: a clean downlink again."""
        shares = (reorder, corrupt, loss)
        if delay_s < 0 or jitter_s < 0 or not all(0 <= share <= 1 for share in shares):
            raise ValueError("delay and jitter must be >= 0, reorder, corrupt and loss in [0, 1]")
        if jitter_s > delay_s:
            raise ValueError("jitter must not exceed the delay (a packet cannot leave early)")
        impaired = delay_s > 0 or any(shares)
        self.downlink = Impairment(delay_s, jitter_s, reorder, corrupt, loss) if impaired else None
        log.info(
            "sfu.downlink_impaired",
            delay_s=delay_s,
            jitter_s=jitter_s,
            reorder=reorder,
            corrupt=corrupt,
            loss=loss,
        )

    def clear(self) -> None:
        """Drop every pending rule and the downlink impairment (actions already taken stay
        taken)."""
        self._http.clear()
        self._tracks.clear()
        self.downlink = None

    @property
    def pending(self) -> int:
        return sum(f.remaining for f in self._http) + sum(f.remaining for f in self._tracks)

    def take_http(self, operation: str, session_id: str | None) -> HttpFault | None:
        """The rule that answers this call, if any; consumes one of its uses."""
        for fault in self._http:
            if fault.matches(operation, session_id):
                self._consume(self._http, fault)
                log.info(
                    "sfu.fault_injected",
                    operation=operation,
                    status=fault.status,
                    error_code=fault.error_code,
                )
                return fault
        return None

    def take_track(self, session_id: str, track_name: str) -> TrackFailure | None:
        for fault in self._tracks:
            if fault.track_name == track_name and fault.session_id in (None, session_id):
                self._consume(self._tracks, fault)
                log.info("sfu.fault_injected", operation="pull", error_code=fault.error_code)
                return TrackFailure(fault.error_code, _TRACK_ERROR_TEXT[fault.error_code])
        return None

    @staticmethod
    def _consume(rules: list[HttpFault] | list[TrackFault], fault: HttpFault | TrackFault) -> None:
        fault.remaining -= 1
        if fault.remaining == 0:
            rules.remove(fault)  # type: ignore[arg-type]

    # -- actions ---------------------------------------------------------------------

    def expire_session(self, session_id: str) -> None:
        """End a session now, as Cloudflare's expiry does: its calls answer 410 from now
        on and its PeerConnection closes (its subscribers stop receiving)."""
        self._act("expire_session", lambda t: t.expire_now(session_id))

    def stop_forwarding(self, session_id: str, track_name: str) -> None:
        """Stop a published track's packets reaching anyone, as when its publisher's
        browser freezes or leaves: the track still looks published in the API."""
        self._act("stop_forwarding", lambda t: t.stop_forwarding(session_id, track_name))

    def collect_track(self, session_id: str, track_name: str) -> None:
        """Garbage-collect a track now: packets stop and later pulls get
        ``not_found_track_error``, as after 30 s of silence on Cloudflare."""
        self._act("collect_track", lambda t: t.collect_track(session_id, track_name))

    def _act(self, action: str, run: Callable[[FaultTarget], bool]) -> None:
        target = self._target()
        if target is None:
            raise RuntimeError("the local SFU is not started")
        if not run(target):
            raise LookupError(f"{action}: no such live session or published track")
        log.info("sfu.fault_action", action=action)
