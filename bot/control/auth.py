"""Who may control a recording: bearer JWT verification and the role policy.

The orchestrator that starts a recorder also mints short-lived tokens for the people in
the consultation. A token is accepted only if its signature, expiry, audience and
consultation id all hold; then its role claim decides the action. Failures carry a reason
a caller can act on (401: fix or renew the token; 403: this token may not do that here)
and never echo the token itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
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


ROLE_POLICY: Final[Mapping[str, frozenset[Action]]] = {
    "orchestrator": frozenset(Action),
    "clinician": frozenset({Action.PAUSE, Action.RESUME, Action.STOP, Action.STATUS}),
    # A patient may ask for privacy at any time, but not end or resume the record.
    "patient": frozenset({Action.PAUSE, Action.STATUS}),
}

UNAUTHENTICATED: Final = "unauthenticated"
"""The audit actor of a refused call whose token could not be trusted."""

_SUBJECT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass(frozen=True)
class Caller:
    """A verified token: the subject goes to the audit trail as the actor."""

    subject: str
    role: str


class AuthError(Exception):
    """A refused call. ``status`` is 401 (no trustworthy token) or 403 (not allowed)."""

    def __init__(self, status: int, reason: str, subject: str = UNAUTHENTICATED) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.subject = subject

    @property
    def error(self) -> str:
        return "unauthorized" if self.status == 401 else "forbidden"


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

    def authorize(self, authorization: str | None, action: Action) -> Caller:
        """The caller behind an ``Authorization`` header, if it may do ``action``."""
        caller = self.authenticate(authorization)
        if action not in self._policy.get(caller.role, frozenset()):
            raise AuthError(403, f"role {caller.role!r} may not {action.value}", caller.subject)
        return caller

    def authenticate(self, authorization: str | None) -> Caller:
        settings = self._settings
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "missing bearer token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token.strip(),
                self._key,
                algorithms=[settings.jwt_algorithm],
                audience=settings.jwt_audience,
                issuer=settings.jwt_issuer or None,
                leeway=settings.jwt_leeway,
                options={"require": ["exp", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(401, _reason(exc)) from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not _SUBJECT.match(subject):
            # The subject becomes the audit actor: an opaque id, never a name or an e-mail.
            raise AuthError(401, "sub must be an opaque id (1-128 of [A-Za-z0-9_.:-])")
        if claims.get(settings.jwt_consultation_claim) != self._consultation_id:
            raise AuthError(403, "token is for another consultation", subject)
        role = claims.get(settings.jwt_role_claim)
        if not isinstance(role, str) or role not in self._policy:
            raise AuthError(403, f"no known role in claim {settings.jwt_role_claim!r}", subject)
        return Caller(subject, role)
