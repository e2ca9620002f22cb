"""One Cloudflare session on the SFU side: one aiortc RTCPeerConnection and its tracks.

Incoming m-lines (what a client sends) become ``PublishedTrack`` inlets, named when the
client publishes them; pulled tracks become ``Subscription`` outlets on ``sendonly``
transceivers whose track never yields a frame, so aiortc never encodes anything.

The PeerConnection is aiortc's, made ICE-lite (``aiortc_hooks.make_ice_lite``); what it
writes and reads is translated by ``sdp_shape``: the client sees SDP shaped like
Cloudflare's (several payload types per m-line in offers to subscribers), aiortc sees
only formats it knows (its own offer's, for the m-lines the SFU sends on).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol
from uuid import uuid4

import structlog
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp

from testbed.sfu import aiortc_hooks, sdp_shape, simulcast
from testbed.sfu.bodies import SessionDescription, Simulcast, TrackIn, UpdateTrackIn
from testbed.sfu.errors import (
    invalid_params,
    invalid_session_description,
    session_gone,
    session_not_ready,
)
from testbed.sfu.faults import Impairment, TrackFailure
from testbed.sfu.forwarder import PublishedTrack, Subscription

log = structlog.get_logger("bot.sfu")

Json = dict[str, Any]
_SSRC_LINE = re.compile(r"^a=ssrc(-group)?:.*(\r?\n)", re.MULTILINE)
_SENDING = ("sendonly", "sendrecv")


class TrackDirectory(Protocol):
    """How a session finds the tracks other sessions publish."""

    def find_track(
        self, session_id: str, track_name: str
    ) -> tuple[SfuSession, PublishedTrack] | None: ...

    def pull_fault(self, session_id: str, track_name: str) -> TrackFailure | None:
        """An injected per-track failure for this pull, if a test asked for one."""
        ...

    def downlink(self) -> Impairment | None:
        """What a test makes the link to subscribers do to packets, if anything."""
        ...

    def offered_codecs(self, track: PublishedTrack) -> list[sdp_shape.Codec]:
        """Every media format the track's publisher offered on its m-line, in order."""
        ...


class IdleTrack(MediaStreamTrack):
    """A track that never yields a frame: its sender only carries forwarded packets."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Any:
        return await asyncio.get_running_loop().create_future()


class SfuSession:
    """A session's PeerConnection, its published inlets and pulled outlets."""

    def __init__(
        self,
        session_id: str,
        directory: TrackDirectory,
        *,
        sender_reports: bool,
        ssrc_in_sdp: bool,
        connect_wait_s: float,
        track_gc_s: float,
        consent_expiry_s: float,
        on_dead: Callable[[SfuSession], None],
    ) -> None:
        self.id = session_id
        self.guard = asyncio.Lock()
        """Held for the whole of a mutation; a second one meanwhile is refused (406)."""
        self.awaiting_answer = False
        self.dead_since: float | None = None
        self._directory = directory
        self._sender_reports = sender_reports
        self._ssrc_in_sdp = ssrc_in_sdp
        self._connect_wait_s = connect_wait_s
        self._track_gc_s = track_gc_s
        self._consent_expiry_s = consent_expiry_s
        self._on_dead = on_dead
        self._negotiated = False
        self._settled = asyncio.Event()
        self._incoming: dict[str, PublishedTrack] = {}
        self._outlets: dict[str, Subscription] = {}
        self._numbers = sdp_shape.PayloadTypes()
        self._offered: dict[str, list[sdp_shape.Codec]] = {}
        """Per m-line a client sends on: every media format it offered there."""
        self._answered: dict[str, list[sdp_shape.Payload]] = {}
        """Per m-line a client sends on: the format(s) the SFU accepted (and RTX)."""
        self._planned: dict[str, list[sdp_shape.Payload]] = {}
        """Per outlet: the payload types the SFU's last offer listed, forwarded one first."""
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self.pc.on("connectionstatechange", self._on_connection_state)

    # -- transport -------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.dead_since is None

    @property
    def connected(self) -> bool:
        return self.alive and self.pc.connectionState == "connected"

    async def wait_connected(self, within_s: float) -> bool:
        if not self.connected and self.alive:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), within_s)
        return self.connected

    async def ready_for_mutation(self) -> None:
        """410 when the transport is gone; 425 when it was set up but is not connected.

        Where Cloudflare answers 425 is not documented; this SFU's choice: every mutation
        on a session whose transport has been negotiated waits up to 5 s for it to
        connect. A session that never negotiated (the recorder's first pull) has no
        transport to wait for and proceeds at once.
        """
        if not self.alive:
            raise session_gone()
        if self._negotiated and not await self.wait_connected(self._connect_wait_s):
            raise session_gone() if not self.alive else session_not_ready()

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self._settled.set()
        elif state in ("failed", "closed") and self.alive:
            self.dead_since = time.monotonic()
            self._settled.set()
            for inlet in self._incoming.values():
                inlet.close()
            log.info("sfu.session_transport_lost", session_id=self.id, state=state)
            self._on_dead(self)

    async def close(self) -> None:
        for inlet in self._incoming.values():
            inlet.close()
        for outlet in self._outlets.values():
            outlet.close()
        await self.pc.close()

    # -- lookups ---------------------------------------------------------------------

    def published(self, track_name: str) -> PublishedTrack | None:
        """An open track of this session by name, unless garbage-collected for silence."""
        for inlet in self._incoming.values():
            if inlet.name == track_name and not inlet.closed:
                if inlet.idle_for(time.monotonic()) > self._track_gc_s:
                    return None
                return inlet
        return None

    async def _resolve(
        self, session_id: str | None, track_name: str | None
    ) -> PublishedTrack | TrackFailure:
        """The source track, or why it cannot be pulled."""
        if not session_id or not track_name:
            raise invalid_params("remote tracks need sessionId and trackName")
        injected = self._directory.pull_fault(session_id, track_name)
        if injected is not None:
            return injected
        found = self._directory.find_track(session_id, track_name)
        if found is None:
            return _not_found(
                "no session publishes this track (unknown, closed or silent for 30 s)"
            )
        publisher, track = found
        if not await publisher.wait_connected(self._connect_wait_s):
            return _not_found("the publisher's transport is not connected")
        if track.closed:
            return _not_found("the track was closed")
        return track

    # -- publish ---------------------------------------------------------------------

    async def answer_offer(self, offer: SessionDescription) -> str:
        """Legacy ``sessions/new`` with an offer: answer it; names come later by mid."""
        if offer.type != "offer":
            raise invalid_session_description("sessionDescription must be an offer")
        return await self._answer(offer.sdp)

    async def publish(
        self, tracks: Sequence[TrackIn], offer: SessionDescription | None, auto_discover: bool
    ) -> Json:
        if offer is None:
            if auto_discover:
                raise invalid_params("autoDiscover needs a sessionDescription offer")
            names = self._check_names(tracks, set(self._unnamed_mids()))
            for mid, name in names.items():
                self._name(mid, name)
            return _tracks_response([{"trackName": n, "mid": m} for m, n in names.items()])
        if offer.type != "offer":
            raise invalid_session_description("publishing needs a sessionDescription offer")
        sending = _sending_mids(offer.sdp)
        names = self._check_names(tracks, sending - self._named_mids())
        if auto_discover:
            for mid in sorted(sending - self._named_mids() - names.keys(), key=_mid_order):
                names[mid] = uuid4().hex
        if not names:
            raise invalid_params("no track to publish: name tracks or set autoDiscover")
        answer = await self._answer(offer.sdp)
        for mid, name in names.items():
            self._name(mid, name)
        log.info("sfu.tracks_published", session_id=self.id, count=len(names))
        return _tracks_response(
            [{"trackName": n, "mid": m} for m, n in names.items()], answer=("answer", answer)
        )

    def _check_names(self, tracks: Sequence[TrackIn], available: set[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        for track in tracks:
            if not track.mid or not track.trackName:
                raise invalid_params("local tracks need mid and trackName")
            if track.mid not in available or track.mid in names:
                raise invalid_params(f"mid {track.mid!r} is not a sending m-line to publish")
            if track.trackName in names.values() or self.published(track.trackName):
                raise invalid_params(f"trackName {track.trackName!r} is already published")
            names[track.mid] = track.trackName
        return names

    def _named_mids(self) -> set[str]:
        return {mid for mid, inlet in self._incoming.items() if inlet.name is not None}

    def _unnamed_mids(self) -> list[str]:
        return [mid for mid, inlet in self._incoming.items() if inlet.name is None]

    def _name(self, mid: str, name: str) -> None:
        self._incoming[mid].name = name

    # -- pull ------------------------------------------------------------------------

    async def pull(self, tracks: Sequence[TrackIn], offer: SessionDescription | None) -> Json:
        sources = await asyncio.gather(*(self._resolve(t.sessionId, t.trackName) for t in tracks))
        if offer is not None:
            return await self._pull_into_offer(tracks, sources, offer)
        added: list[tuple[RTCRtpTransceiver, Subscription]] = []
        for track, source in zip(tracks, sources, strict=True):
            if isinstance(source, PublishedTrack):
                added.append(self._reuse_outlet(source, added) or self._add_outlet(source))
                added[-1][1].simulcast = _layer_preference(track.simulcast)
        if not added:
            return _tracks_response(_pull_results(tracks, sources, {}))
        try:
            await self._offer()
        except Exception:
            for transceiver, outlet in added:
                _retire(transceiver, outlet)
            raise
        mids: dict[int, str] = {}
        for (transceiver, outlet), index in zip(
            added, (i for i, s in enumerate(sources) if isinstance(s, PublishedTrack)), strict=True
        ):
            self._outlets[_mid(transceiver)] = outlet
            mids[index] = _mid(transceiver)
        self.awaiting_answer = True
        log.info("sfu.tracks_pulled", session_id=self.id, count=len(added), offer="sfu")
        return _tracks_response(
            _pull_results(tracks, sources, mids),
            answer=("offer", self._outgoing_sdp()),
            renegotiate=True,
        )

    async def _pull_into_offer(
        self,
        tracks: Sequence[TrackIn],
        sources: Sequence[PublishedTrack | TrackFailure],
        offer: SessionDescription,
    ) -> Json:
        """Pull with the caller's own offer: its recvonly m-lines get our sendonly outlets."""
        if offer.type != "offer":
            raise invalid_session_description("sessionDescription must be an offer")
        known = {t.mid for t in self.pc.getTransceivers() if t.mid is not None}
        new_media = [
            m
            for m in _parse(offer.sdp).media
            if m.kind in ("audio", "video") and m.rtp.muxId not in known
        ]
        media_by_mid = {m.rtp.muxId: m for m in new_media}
        wanted: dict[str, PublishedTrack] = {}
        preferences: dict[str, simulcast.LayerPreference] = {}
        for track, source in zip(tracks, sources, strict=True):
            media = media_by_mid.get(track.mid or "")
            if media is None or media.direction not in ("recvonly", "sendrecv"):
                raise invalid_params("each pulled track needs the mid of a new recvonly m-line")
            if isinstance(source, PublishedTrack):
                if source.kind != media.kind:
                    raise invalid_params(f"mid {track.mid!r} is {media.kind}, the track is not")
                wanted[media.rtp.muxId] = source
                preferences[media.rtp.muxId] = _layer_preference(track.simulcast)
        added: list[tuple[RTCRtpTransceiver, Subscription]] = []
        # aiortc binds new m-lines to unassigned transceivers of the same kind in order,
        # so one transceiver is added per new m-line, in the offer's order.
        for media in new_media:
            outlet_source = wanted.get(media.rtp.muxId)
            if outlet_source is not None:
                added.append(self._add_outlet(outlet_source))
                added[-1][1].simulcast = preferences[media.rtp.muxId]
            else:
                sends = media.direction in _SENDING
                self.pc.addTransceiver(media.kind, direction="recvonly" if sends else "inactive")
        try:
            answer = await self._answer(offer.sdp)
        except Exception:
            for _, outlet in added:
                outlet.close()
            raise
        for transceiver, outlet in added:
            self._outlets[_mid(transceiver)] = outlet
            # The SFU answered the client's own offer: its answer says the payload types.
            own = sdp_shape.payloads(sdp_shape.find_section(answer, _mid(transceiver)) or [])
            outlet.use_payload_types(*sdp_shape.own_choice(own))
        mids = {
            i: track.mid or ""
            for i, (track, source) in enumerate(zip(tracks, sources, strict=True))
            if isinstance(source, PublishedTrack)
        }
        log.info("sfu.tracks_pulled", session_id=self.id, count=len(added), offer="client")
        return _tracks_response(_pull_results(tracks, sources, mids), answer=("answer", answer))

    def _add_outlet(self, source: PublishedTrack) -> tuple[RTCRtpTransceiver, Subscription]:
        transceiver = self.pc.addTransceiver(IdleTrack(source.kind), direction="sendonly")
        transceiver.setCodecPreferences(_carrier(source))
        return transceiver, Subscription(transceiver.sender, source, self._directory.downlink)

    def _reuse_outlet(
        self, source: PublishedTrack, taken: Sequence[tuple[RTCRtpTransceiver, Subscription]]
    ) -> tuple[RTCRtpTransceiver, Subscription] | None:
        """A closed, inactive m-line of the same kind, to carry a new track (same mid).

        Browsers and Cloudflare reuse such m-lines (observed); this SFU always does when
        it can, the harder case for a client, which must then expect a known mid to
        carry another track (and maybe another codec) after renegotiation.
        """
        busy = {id(outlet) for _, outlet in taken}
        for transceiver in self.pc.getTransceivers():
            outlet = self._outlets.get(transceiver.mid or "")
            if (
                outlet is not None
                and outlet.closed
                and id(outlet) not in busy
                and transceiver.kind == source.kind
                and transceiver.direction == "inactive"
            ):
                transceiver.direction = "sendonly"
                transceiver.setCodecPreferences(_carrier(source))
                outlet.reopen(source)
                return transceiver, outlet
        return None

    async def _offer(self) -> None:
        aiortc_hooks.make_ice_lite(self.pc, self._consent_expiry_s)
        await self.pc.setLocalDescription(await self.pc.createOffer())

    async def renegotiate(self, answer: SessionDescription) -> None:
        """Apply a client's answer to the SFU's offer.

        Each outlet forwards on the payload type the answer chose for its codec; an
        m-line the answer declined, or answered without that codec, sends nothing (and
        the renegotiation still succeeds). aiortc is given the answer with its own
        formats on those m-lines, so nothing it does not know can make it fail.
        """
        if not self.awaiting_answer:
            raise invalid_session_description("no SFU offer is waiting for an answer")
        if answer.type != "answer":
            raise invalid_session_description("renegotiate takes the answer to the SFU's offer")
        _parse(answer.sdp)
        choices = {
            mid: sdp_shape.answer_choice(
                sdp_shape.find_section(answer.sdp, mid), self._planned.get(mid, [])
            )
            for mid in self._outlets
        }
        inner = sdp_shape.answer_for_aiortc(
            sdp_shape.acceptable_to_aiortc(answer.sdp),
            self.pc.localDescription.sdp,
            {mid: pt is not None for mid, (pt, _) in choices.items()},
        )
        await self._apply_remote(RTCSessionDescription(sdp=inner, type="answer"))
        for mid, (payload_type, rtx_payload_type) in choices.items():
            self._outlets[mid].use_payload_types(payload_type, rtx_payload_type)
        self.awaiting_answer = False
        self._negotiated = True

    # -- close and update ------------------------------------------------------------

    async def close_tracks(
        self, mids: Sequence[str], force: bool, offer: SessionDescription | None
    ) -> Json:
        results: list[Json] = []
        closing: list[str] = []
        for mid in mids:
            if self._open_track(mid) and mid not in closing:
                closing.append(mid)
                results.append({"mid": mid})
            else:
                results.append(
                    {
                        "mid": mid,
                        "errorCode": "close_track_error",
                        "errorDescription": "no open track with this mid in this session",
                    }
                )
        answer: tuple[str, str] | None = None
        if closing and not force:
            if offer is not None:
                if offer.type != "offer":
                    raise invalid_session_description("sessionDescription must be an offer")
                answer = ("answer", await self._answer(offer.sdp))
            else:
                self._deactivate(closing)
                await self._offer()
                self.awaiting_answer = True
                answer = ("offer", self._outgoing_sdp())
        # Closed with or without force, the m-line is inactive in the SFU's next offer and
        # free for a later pull (observed: Cloudflare and browsers reuse m-lines).
        self._deactivate(closing)
        for mid in closing:
            if mid in self._outlets:
                self._outlets[mid].close()
            else:
                self._incoming[mid].close()
        log.info("sfu.tracks_closed", session_id=self.id, count=len(closing), force=force)
        return _tracks_response(results, answer=answer, renegotiate=self.awaiting_answer)

    def _deactivate(self, mids: Sequence[str]) -> None:
        for transceiver in self.pc.getTransceivers():
            if transceiver.mid in mids:
                transceiver.direction = "inactive"

    def _open_track(self, mid: str) -> bool:
        outlet = self._outlets.get(mid)
        if outlet is not None:
            return not outlet.closed
        inlet = self._incoming.get(mid)
        return inlet is not None and inlet.name is not None and not inlet.closed

    async def update_tracks(self, items: Sequence[UpdateTrackIn]) -> Json:
        """Change a pulled track's preferred layer, or feed its transceiver another track.

        A new ``preferredRid`` switches the subscriber to that layer at its next keyframe
        (a PLI asks the publisher for one); fields left out keep their value.
        """
        results: list[Json] = []
        for item in items:
            outlet = self._outlets.get(item.mid)
            error: str | None = None
            if item.location != "remote" or outlet is None or outlet.closed:
                error = "no open pulled track with this mid in this session"
            elif item.trackName is not None and (
                item.trackName != outlet.source.name
                or (item.sessionId or outlet.source.session_id) != outlet.source.session_id
            ):
                source = await self._resolve(
                    item.sessionId or outlet.source.session_id, item.trackName
                )
                if not isinstance(source, PublishedTrack):
                    error = source.description
                elif source.codec.mimeType.lower() != outlet.source.codec.mimeType.lower():
                    error = "the new track's codec differs; pull it into a new transceiver"
                else:
                    outlet.rebind(source)
            if outlet is None or error is not None:
                results.append(
                    {"mid": item.mid, "errorCode": "update_track_error", "errorDescription": error}
                )
                continue
            outlet.simulcast = _layer_preference(item.simulcast, outlet.simulcast)
            results.append(
                {
                    "mid": item.mid,
                    "sessionId": outlet.source.session_id,
                    "trackName": outlet.source.name,
                }
            )
        return _tracks_response(results)

    def state(self) -> Json:
        tracks: list[Json] = []
        for mid, inlet in self._incoming.items():
            if inlet.name is not None:
                tracks.append(
                    {
                        "location": "local",
                        "mid": mid,
                        "trackName": inlet.name,
                        "status": _status(self.alive and not inlet.closed),
                    }
                )
        for mid, outlet in self._outlets.items():
            tracks.append(
                {
                    "location": "remote",
                    "mid": mid,
                    "trackName": outlet.source.name,
                    "sessionId": outlet.source.session_id,
                    "status": _outlet_status(outlet) if self.alive else "inactive",
                }
            )
        return {"tracks": tracks, "dataChannels": []}

    # -- SDP -------------------------------------------------------------------------

    async def _answer(self, sdp: str) -> str:
        if not _parse(sdp).media:
            raise invalid_session_description("the offer has no media section")
        await self._apply_remote(
            RTCSessionDescription(sdp=sdp_shape.acceptable_to_aiortc(sdp), type="offer")
        )
        sending = _sending_mids(sdp)
        layers = simulcast.offered_layers(sdp)
        extensions = {m.rtp.muxId: m.rtp.headerExtensions for m in _parse(sdp).media}
        for transceiver in self.pc.getTransceivers():
            if transceiver.mid in sending:
                self._accept_publisher_codec(transceiver, sdp)
            if transceiver.mid in layers:
                aiortc_hooks.accept_header_extensions(
                    transceiver, extensions[transceiver.mid], simulcast.RID_EXTENSIONS
                )
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._negotiated = True
        self._adopt_incoming(sending, layers)
        return simulcast.accept_layers(self._outgoing_sdp(), layers)

    def _adopt_incoming(self, sending: set[str], layers: dict[str, tuple[str, ...]]) -> None:
        """Every m-line the client sends on gets an inlet, named or not, so that no
        packet ever reaches aiortc's decoder (the SFU spends no CPU decoding); ``layers``:
        the simulcast rids offered per mid."""
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            if mid in sending and mid not in self._incoming:
                self._incoming[mid] = PublishedTrack(
                    session_id=self.id,
                    name=None,
                    mid=mid,
                    kind=transceiver.kind,
                    codecs=aiortc_hooks.negotiated_codecs(transceiver),
                    receiver=transceiver.receiver,
                    sender_reports=self._sender_reports,
                    rids=layers.get(mid, ()),
                )

    def _accept_publisher_codec(self, transceiver: RTCRtpTransceiver, offer: str) -> None:
        """Answer a sending m-line with the client's first codec the SFU can forward, in
        the client's own payload type and format (any H.264 profile or packetization
        mode), and its RTX; the SFU forwards exactly that to subscribers."""
        mid = _mid(transceiver)
        offered = sdp_shape.payloads(sdp_shape.find_section(offer, mid) or [])
        self._numbers.reserve(p.pt for p in offered)
        feedback = _INLET_FEEDBACK if transceiver.kind == "video" else ()
        accepted = [
            replace(p, codec=replace(p.codec, feedback=() if p.codec.is_rtx else feedback))
            for p in sdp_shape.first_forwardable(transceiver.kind, offered)
        ]
        if not accepted:
            return  # aiortc matched a codec the SFU cannot forward: unreachable today
        self._offered[mid] = [p.codec for p in offered if not p.codec.is_rtx]
        self._answered[mid] = accepted
        aiortc_hooks.answer_with(
            transceiver, [sdp_shape.parameters_of(transceiver.kind, p) for p in accepted]
        )

    def offered_codecs(self, mid: str) -> list[sdp_shape.Codec]:
        return list(self._offered.get(mid, []))

    async def _apply_remote(self, description: RTCSessionDescription) -> None:
        try:
            await self.pc.setRemoteDescription(description)
        except Exception as exc:
            # aiortc reports bad SDP with assorted exception types (ValueError,
            # OperationError, InvalidStateError, ...): all mean the description is unusable.
            raise invalid_session_description(
                f"session description rejected: {type(exc).__name__}: {exc}"[:300]
            ) from None
        # Transceivers the description created need the lite agent before they connect.
        aiortc_hooks.make_ice_lite(self.pc, self._consent_expiry_s)

    def _outgoing_sdp(self) -> str:
        """The SFU's current local description as Cloudflare's SFU would write it."""
        description = self.pc.localDescription
        offer = description.type == "offer"
        session, media = sdp_shape.split(description.sdp)
        if offer:
            media = [self._offered_section(section) for section in media]
        sdp = sdp_shape.shape(sdp_shape.join(session, media), offer=offer)
        if not self._ssrc_in_sdp:
            sdp = _SSRC_LINE.sub("", sdp)
        return sdp

    def _offered_section(self, section: sdp_shape.Section) -> sdp_shape.Section:
        """An m-line of an SFU offer with the payload types Cloudflare would list: for an
        outlet the multi-codec list (``sdp_shape.subscriber_payloads``), for a client's
        own sending m-line the format the SFU accepted from it."""
        mid = sdp_shape.mid_of(section) or ""
        outlet = self._outlets.get(mid)
        if outlet is not None:
            source = outlet.source
            planned = sdp_shape.subscriber_payloads(
                source.kind,
                sdp_shape.codec_of(source.codec),
                self._directory.offered_codecs(source),
                self._numbers,
            )
            self._planned[mid] = planned
            return sdp_shape.set_payloads(section, planned)
        accepted = self._answered.get(mid)
        return section if accepted is None else sdp_shape.set_payloads(section, accepted)


_INLET_FEEDBACK = ("nack", "nack pli", "goog-remb")
"""What the SFU's receiving side does for a publisher's video (as aiortc's answer said)."""


def _carrier(source: PublishedTrack) -> list[RTCRtpCodecCapability]:
    """aiortc's own format for the source's codec (and RTX for video), for the SFU's offer.

    aiortc offers only formats from its table; the subscriber sees the publisher's own
    format instead (``_offered_section``) and aiortc never learns the difference.
    """
    wanted = source.codec
    capabilities = RTCRtpSender.getCapabilities(source.kind).codecs
    carrier = [
        next(
            c
            for c in capabilities
            if c.mimeType.lower() == wanted.mimeType.lower() and c.clockRate == wanted.clockRate
        )
    ]
    if source.kind == "video":
        carrier += [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
    return carrier


def _retire(transceiver: RTCRtpTransceiver, outlet: Subscription) -> None:
    outlet.close()
    transceiver.direction = "inactive"


def _outlet_status(outlet: Subscription) -> str:
    """``initializing`` until the subscriber answered with the track's codec and a first
    packet was forwarded (a choice: Cloudflare documents the value, not when it shows);
    ``inactive`` once closed or declined by the subscriber's answer."""
    if outlet.closed or outlet.declined:
        return "inactive"
    return "active" if outlet.forwarding else "initializing"


def _mid(transceiver: RTCRtpTransceiver) -> str:
    """The mid aiortc assigned while applying a description (never None afterwards)."""
    if transceiver.mid is None:
        raise RuntimeError("transceiver has no mid after negotiation")
    return transceiver.mid


def _parse(sdp: str) -> Any:
    try:
        return aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as exc:
        raise invalid_session_description(f"unparsable SDP: {type(exc).__name__}") from None


def _sending_mids(sdp: str) -> set[str]:
    return {
        m.rtp.muxId
        for m in _parse(sdp).media
        if m.kind in ("audio", "video") and m.direction in _SENDING
    }


def _mid_order(mid: str) -> tuple[int, str]:
    return (int(mid), "") if mid.isdigit() else (1 << 30, mid)


def _status(active: bool) -> str:
    return "active" if active else "inactive"


def _layer_preference(
    body: Simulcast | None, base: simulcast.LayerPreference | None = None
) -> simulcast.LayerPreference:
    """A ``simulcast`` object of ``tracks/new`` (on the defaults) or ``tracks/update`` (on
    the subscription's current preference: absent fields keep their value)."""
    preference = base or simulcast.LayerPreference()
    if body is None:
        return preference
    return preference.updated(body.preferredRid, body.priorityOrdering, body.ridNotAvailable)


def _not_found(description: str) -> TrackFailure:
    return TrackFailure("not_found_track_error", description)


def _pull_results(
    tracks: Sequence[TrackIn],
    sources: Sequence[PublishedTrack | TrackFailure],
    mids: dict[int, str],
) -> list[Json]:
    """Per-track results: the pulled ones in request order, then the failed ones
    (``"mid": ""``).

    Assumed, stricter: Cloudflare does not document the order, and its own clients match
    results to requests by ``(sessionId, trackName)``; a client that matches by position
    gets the wrong mid here as soon as one pull fails.
    """
    pulled: list[Json] = []
    failed: list[Json] = []
    for index, (track, source) in enumerate(zip(tracks, sources, strict=True)):
        if isinstance(source, PublishedTrack):
            pulled.append(
                {"sessionId": track.sessionId, "trackName": track.trackName, "mid": mids[index]}
            )
        else:
            failed.append(
                {
                    "sessionId": track.sessionId,
                    "trackName": track.trackName,
                    "mid": "",
                    "errorCode": source.code,
                    "errorDescription": source.description,
                }
            )
    return pulled + failed


def _tracks_response(
    tracks: list[Json], *, answer: tuple[str, str] | None = None, renegotiate: bool = False
) -> Json:
    body: Json = {"requiresImmediateRenegotiation": renegotiate, "tracks": tracks}
    if answer is not None:
        body["sessionDescription"] = {"type": answer[0], "sdp": answer[1]}
    return body
