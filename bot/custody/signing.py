"""The clinic's signature on a manifest: a detached JWS (RFC 7515, appendix F).

The signature object stored as ``<key>.manifest.sig`` is a compact JWS whose payload
part is empty: the payload is the manifest exactly as stored, so any JOSE library
verifies it by putting the manifest's base64url back between the dots. The header names
the algorithm (``EdDSA`` for Ed25519, ``ES256`` for ECDSA P-256) and the key (``kid``),
so a verifier holding several public keys (rotation) picks the right one.

The private key is loaded once, at start-up, so a bad key stops the recorder before
anything is recorded; neither the key nor anything derived from it but the public
thumbprint appears in a log, an error or a manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt import PyJWK, api_jws
from jwt.exceptions import InvalidTokenError

from bot.config import ConfigError, CustodySettings

Algorithm = Literal["EdDSA", "ES256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
CONTENT_TYPE: Final = "application/jose"
_HEADER_TYPE: Final = "JOSE"


class SignatureError(Exception):
    """A signature that does not verify, or cannot be checked; the message says which."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _algorithm(key: PrivateKey | PublicKey) -> Algorithm:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError(f"ECDSA on {key.curve.name}; use P-256 (secp256r1) or Ed25519")


def thumbprint(public: PublicKey) -> str:
    """RFC 7638 JWK thumbprint: the default ``kid``, the same whoever computes it."""
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        members: dict[str, str] = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    else:
        numbers = public.public_numbers()
        members = {
            "crv": "P-256",
            "kty": "EC",
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return _b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class Signer:
    """Signs manifests with one private key."""

    key: PrivateKey
    key_id: str
    algorithm: Algorithm

    def __repr__(self) -> str:  # the key object never reaches a log through a repr
        return f"Signer(key_id={self.key_id!r}, algorithm={self.algorithm!r})"

    def sign(self, payload: bytes) -> bytes:
        """The detached compact JWS over ``payload``."""
        token = api_jws.encode(
            payload,
            self.key,
            algorithm=self.algorithm,
            headers={"kid": self.key_id, "typ": _HEADER_TYPE, "cty": "json"},
        )
        header, _, signature = token.split(".")
        return f"{header}..{signature}".encode("ascii")


def load_signer(settings: CustodySettings) -> Signer | None:
    """The configured signer; None when no key is set (and none is required).

    Raises ``ConfigError`` naming the setting and what to do, never the key's content.
    """
    pem = settings.signing_key.get_secret_value().encode()
    source = "custody.signing_key (BOT_CUSTODY_SIGNING_KEY)"
    if settings.signing_key_file is not None:
        source = f"custody.signing_key_file {settings.signing_key_file}"
        try:
            pem = settings.signing_key_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read it ({exc.strerror})") from None
    if not pem:
        if settings.require_signature:
            raise ConfigError(
                "custody.require_signature is set but no key is: set BOT_CUSTODY_SIGNING_KEY "
                "or custody.signing_key_file to an Ed25519 or ECDSA P-256 private key (PEM)"
            )
        return None
    key = _private_key(pem, source)
    try:
        algorithm = _algorithm(key)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return Signer(key, settings.key_id or thumbprint(key.public_key()), algorithm)


def _private_key(pem: bytes, source: str) -> PrivateKey:
    try:
        if pem.lstrip().startswith(b"-----BEGIN OPENSSH"):
            key: Any = serialization.load_ssh_private_key(pem, password=None)
        else:
            key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{source} is not an unencrypted PEM or OpenSSH private key; make one with "
            "`openssl genpkey -algorithm ed25519`"
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{source} is a {type(key).__name__}; use Ed25519 or ECDSA P-256")
    return key


# -- verification ----------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyingKey:
    key: PublicKey
    key_id: str
    algorithm: Algorithm


def load_public_keys(path: Path) -> list[VerifyingKey]:
    """The public keys in a file: one PEM public key (``kid`` = its thumbprint), or a JWKS
    (``{"keys": [...]}``, each with its ``kid`` or its thumbprint)."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        try:
            entries = json.loads(data)["keys"]
            jwks = [(PyJWK(entry).key, entry.get("kid")) for entry in entries]
        except (ValueError, KeyError, TypeError, InvalidTokenError) as exc:
            raise SignatureError(f"{path}: not a JWKS with Ed25519/P-256 keys ({exc})") from None
    else:
        try:
            jwks = [(serialization.load_pem_public_key(data), None)]
        except ValueError:
            raise SignatureError(f"{path}: not a PEM public key") from None
    keys = []
    for key, kid in jwks:
        if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
            raise SignatureError(f"{path}: a {type(key).__name__}; Ed25519 or P-256 expected")
        keys.append(VerifyingKey(key, kid or thumbprint(key), _algorithm(key)))
    return keys


def verify_detached(signature: bytes, payload: bytes, keys: list[VerifyingKey]) -> VerifyingKey:
    """The key whose ``kid`` the signature names and that verifies it over ``payload``.

    Raises ``SignatureError`` saying what failed: not a detached JWS, an unknown key, an
    algorithm the key does not have, or a signature that does not match.
    """
    parts = signature.strip().split(b".")
    if len(parts) != 3 or parts[1]:
        raise SignatureError("the signature is not a detached compact JWS (header..signature)")
    try:
        header = api_jws.get_unverified_header(parts[0] + b".e30." + parts[2])
    except InvalidTokenError as exc:
        raise SignatureError(f"the signature's header cannot be read ({exc})") from None
    kid, alg = header.get("kid"), header.get("alg")
    matching = [k for k in keys if k.key_id == kid]
    if not matching:
        known = ", ".join(k.key_id for k in keys) or "none"
        raise SignatureError(
            f"signed with key {kid!r}, which is not among the keys given ({known})"
        )
    for candidate in matching:
        if candidate.algorithm != alg:
            continue
        token = parts[0] + b"." + _b64url(payload).encode() + b"." + parts[2]
        try:
            api_jws.decode_complete(token, candidate.key, algorithms=[candidate.algorithm])
        except InvalidTokenError:
            continue
        return candidate
    raise SignatureError(
        f"the signature does not verify with key {kid!r} ({alg}): the manifest was changed "
        "after signing, or another key signed it"
    )
