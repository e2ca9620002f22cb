"""The clinic's key: loading it (with errors that never show it), signing, verifying."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bot.config import ConfigError, CustodySettings
from bot.custody.signing import (
    SignatureError,
    load_public_keys,
    load_signer,
    thumbprint,
    verify_detached,
)

Key = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _pem(key: Key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _public_pem(key: Key, path: Path) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
)
def test_a_detached_jws_any_jose_library_reads(key: Key, alg: str, tmp_path: Path) -> None:
    signer = load_signer(CustodySettings(signing_key=_pem(key)))
    assert signer is not None and signer.algorithm == alg
    assert signer.key_id == thumbprint(key.public_key())  # type: ignore[arg-type]
    payload = b'{"manifest": true}\n'
    header, empty, signature = signer.sign(payload).decode().split(".")
    assert empty == ""
    # Appendix F of RFC 7515: put the payload back and it is an ordinary JWS.
    attached = f"{header}.{base64.urlsafe_b64encode(payload).rstrip(b'=').decode()}.{signature}"
    decoded = jwt.api_jws.decode_complete(attached, key.public_key(), algorithms=[alg])
    assert decoded["payload"] == payload and decoded["header"]["kid"] == signer.key_id
    keys = load_public_keys(_public_pem(key, tmp_path / "k.pem"))
    assert verify_detached(signer.sign(payload), payload, keys).key_id == signer.key_id
    with pytest.raises(SignatureError, match="changed after signing"):
        verify_detached(signer.sign(payload), payload + b" ", keys)


def test_a_jwks_with_rotated_keys(tmp_path: Path) -> None:
    old, new = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    jwks = {
        "keys": [
            json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(k.public_key())) | {"kid": kid}
            for k, kid in ((old, "clinic-2025"), (new, "clinic-2026"))
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    keys = load_public_keys(path)
    for key, kid in ((old, "clinic-2025"), (new, "clinic-2026")):
        signer = load_signer(CustodySettings(signing_key=_pem(key), key_id=kid))
        assert signer is not None
        assert verify_detached(signer.sign(b"m"), b"m", keys).key_id == kid


def test_no_key_is_unsigned_unless_a_signature_is_required() -> None:
    assert load_signer(CustodySettings()) is None
    with pytest.raises(ConfigError, match="require_signature is set but no key is"):
        load_signer(CustodySettings(require_signature=True))


@pytest.mark.parametrize(
    ("pem", "says"),
    [
        (_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "RSAPrivateKey"),
        (_pem(ec.generate_private_key(ec.SECP384R1())), "use P-256"),
        (
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n"
            "-----END PRIVATE KEY-----\n",
            "not an unencrypted PEM",
        ),
    ],
    ids=["rsa", "p384", "garbage"],
)
def test_a_bad_key_is_refused_without_showing_it(pem: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        load_signer(CustodySettings(signing_key=pem))
    body = pem.splitlines()[1]
    assert body not in str(caught.value) and "BEGIN" not in str(caught.value)


def test_a_key_file(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "clinic.pem"
    path.write_text(_pem(key))
    signer = load_signer(CustodySettings(signing_key_file=path, key_id="clinic-1"))
    assert signer is not None and signer.key_id == "clinic-1"
    assert "PRIVATE" not in repr(signer)
    with pytest.raises(ConfigError, match="cannot read it"):
        load_signer(CustodySettings(signing_key_file=tmp_path / "missing.pem"))
