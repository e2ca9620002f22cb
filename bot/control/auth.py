"""Who may control a recording: bearer JWT verification and the role policy.

The orchestrator that starts a recorder also mints short-lived tokens for the people in
the consultation. A token is accepted only if its signature, expiry, audience and
consultation id all hold, and it was not minted to live longer than
``control.jwt_max_lifetime``; then its role claim decides the action. With
``control.jwt_replay_cache`` on, a token changes the recording at most once (its ``jti``),
so one seen on the wire cannot be played again. Failures carry a reason a caller can act
on (401: fix or renew the token; 403: this token may not do that here) and never echo the
token itself.
"""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from bot.config import ConfigError, ControlSettings


class Action(StrEnum):
    ADD = "add"
    DROP = "drop"
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "stop"
    STATUS = "status"
    CONSENT = "consent"
    """Record anyone's consent, given or withdrawn."""
    WITHDRAW_OWN_CONSENT = "withdraw_own_consent"
    """Withdraw one's own consent (the token's ``sub`` is the participant id)."""
    E2EE = "e2ee"
    """Relay the encrypted call's handshake (orchestrator only)."""


ROLE_POLICY: Final[Mapping[str, frozenset[Action]]] = {
    "orchestrator": frozenset(Action),
    "clinician": frozenset(
        {Action.PAUSE, Action.RESUME, Action.STOP, Action.STATUS, Action.CONSENT}
    ),
    # A patient may ask for privacy and withdraw their own consent at any time, but not
    # end or resume the record, nor give consent on anyone's behalf.
    "patient": frozenset({Action.PAUSE, Action.STATUS, Action.WITHDRAW_OWN_CONSENT}),
}

UNAUTHENTICATED: Final = "unauthenticated"
"""The audit actor of a refused call whose token could not be trusted."""

MAX_AUTHORIZATION: Final = 4096
"""Longest ``Authorization`` header read: a bearer JWT is a few hundred bytes; more is
not a token, and parsing it would only cost time."""

_SUBJECT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_MAX_JTI: Final = 256


@dataclass(frozen=True)
class Caller:
    """A verified token: the subject goes to the audit trail as the actor."""

    subject: str
    role: str
    token_id: str | None = None
    """The token's ``jti``, if it has one."""
    expires: float = 0.0
    """The token's ``exp`` (Unix seconds)."""
    action: Action | None = None
    """The action this call was allowed as (of those the route accepts)."""


class AuthError(Exception):
    """A refused call. ``status`` is 401 (no trustworthy token), 403 (not allowed) or 431
    (an ``Authorization`` header too long to hold a token)."""

    def __init__(self, status: int, reason: str, subject: str = UNAUTHENTICATED) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.subject = subject

    @property
    def error(self) -> str:
        return {401: "unauthorized", 431: "header_too_large"}.get(self.status, "forbidden")


def _reason(exc: jwt.InvalidTokenError) -> str:
    """A caller-facing reason; PyJWT's own messages may quote claim values."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token not yet valid (nbf or iat in the future)"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        if exc.claim == "iat":
            return "missing claim 'iat' (needed to check control.jwt_max_lifetime)"
        return f"missing claim {exc.claim!r}"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "signing algorithm not allowed"
    if isinstance(exc, jwt.DecodeError):
        return "malformed token"
    return "invalid token"


def _public_key(pem: bytes, algorithm: str, path: Path) -> RSAPublicKey | EllipticCurvePublicKey:
    """Parse once; a private key is refused, the recorder never needs one."""
    wanted = RSAPublicKey if algorithm == "RS256" else EllipticCurvePublicKey
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, wanted):
        raise ConfigError(
            f"control.jwt_public_key_path: {path} is not a PEM public key for {algorithm}"
        )
    return key


class ReplayCache:
    """The ``jti`` of every token that changed the recording, each kept while its token is
    still accepted (``exp`` plus the leeway); after that the token is refused for its age
    anyway, so the cache holds at most the tokens alive at once, and
    ``control.jwt_max_lifetime`` bounds how long that is."""

    def __init__(self, leeway: float, clock: Callable[[], float] = time.time) -> None:
        self._leeway = leeway
        self._clock = clock
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def spend(self, caller: Caller, action: Action) -> None:
        """Accept the caller's token for this one change; refuse a token seen before.

        The replay refusal names the subject: the token is genuine (its signature holds),
        so the audit trail should say whose token was played again.
        """
        if caller.token_id is None:
            raise AuthError(
                401,
                f"missing claim 'jti' (control.jwt_replay_cache is on: a token may "
                f"{action.value} only with a jti, and only once)",
            )
        now = self._clock()
        while self._expiry and self._expiry[0][0] < now:
            _, gone = heapq.heappop(self._expiry)
            self._seen.discard(gone)
        if caller.token_id in self._seen:
            raise AuthError(
                401, "token already used (jti seen before); mint a new one", caller.subject
            )
        self._seen.add(caller.token_id)
        heapq.heappush(self._expiry, (caller.expires + self._leeway, caller.token_id))


class Authorizer:
    """Verifies bearer tokens for one consultation with the configured key and policy.

    The PEM public key is read once here, at start-up, so a missing or bad key fails the
    recorder before it records rather than on the first control call.
    """

    def __init__(
        self,
        settings: ControlSettings,
        consultation_id: str,
        policy: Mapping[str, frozenset[Action]] = ROLE_POLICY,
    ) -> None:
        self._settings = settings
        self._consultation_id = consultation_id
        self._policy = policy
        self._replays = ReplayCache(settings.jwt_leeway) if settings.jwt_replay_cache else None
        self._key: Any
        if settings.jwt_algorithm == "HS256":
            secret = settings.jwt_secret.get_secret_value()
            if not secret:
                raise ConfigError("control.jwt_secret is required for HS256")
            self._key = secret
        else:
            path = settings.jwt_public_key_path
            if path is None:
                raise ConfigError(
                    f"control.jwt_public_key_path is required for {settings.jwt_algorithm}"
                )
            try:
                pem = path.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"control.jwt_public_key_path: cannot read {path}: {exc.strerror}"
                ) from None
            self._key = _public_key(pem, settings.jwt_algorithm, path)

    def authorize(self, authorization: str | None, action: Action, *also: Action) -> Caller:
        """The caller behind an ``Authorization`` header, if it may do ``action`` (or, for a
        route that accepts several, the first of ``also`` it may do).

        A token's ``jti`` is spent only once the call is allowed, whatever the call then
        does: a refused call must not burn the token of whoever may make it.
        """
        caller = self.authenticate(authorization)
        allowed = self._policy.get(caller.role, frozenset())
        granted = next((a for a in (action, *also) if a in allowed), None)
        if granted is None:
            raise AuthError(403, f"role {caller.role!r} may not {action.value}", caller.subject)
        if self._replays is not None and granted is not Action.STATUS:
            self._replays.spend(caller, granted)
        return replace(caller, action=granted)

    def authenticate(self, authorization: str | None) -> Caller:
        settings = self._settings
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "missing bearer token")
        max_lifetime = settings.jwt_max_lifetime
        required = ["exp", "aud", "sub", "iat"] if max_lifetime else ["exp", "aud", "sub"]
        try:
            claims: dict[str, Any] = jwt.decode(
                token.strip(),
                self._key,
                algorithms=[settings.jwt_algorithm],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer or None,
                leeway=settings.jwt_leeway,
                options={"require": required},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, _reason(exc)) from None
        expires = int(claims["exp"])  # PyJWT has checked that exp and iat convert
        lifetime = expires - int(claims.get("iat", expires))
        if max_lifetime and lifetime > max_lifetime:
            raise AuthError(
                401,
                f"token lifetime {lifetime} s exceeds control.jwt_max_lifetime {max_lifetime} s",
            )
        subject = claims.get("sub")
        if not isinstance(subject, str) or not _SUBJECT.match(subject):
            # The subject becomes the audit actor: an opaque id, never a name or an e-mail.
            raise AuthError(401, "sub must be an opaque id (1-128 of [A-Za-z0-9_.:-])")
        token_id = claims.get("jti")
        if token_id is not None and (
            not isinstance(token_id, str) or not 0 < len(token_id) <= _MAX_JTI
        ):
            raise AuthError(401, f"jti must be a string of 1-{_MAX_JTI} characters")
        if claims.get(settings.jwt_consultation_claim) != self._consultation_id:
            raise AuthError(403, "token is for another consultation", subject)
        role = claims.get(settings.jwt_role_claim)
        if not isinstance(role, str) or role not in self._policy:
            raise AuthError(403, f"no known role in claim {settings.jwt_role_claim!r}", subject)
        return Caller(subject, role, token_id, expires)
