"""Cipher suite 1 of RFC 9420 (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519) on ``cryptography``.

The one cipher suite Orange Meets' openmls worker speaks (docs/e2ee-mls-choice.md §1), and
so the only one here: no negotiation, no agility, nothing to misconfigure. The labelled
helpers are RFC 9420 §5.1-5.2 and §5.3.1; HPKE is RFC 9180 base mode with
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-128-GCM, single-shot, written out here
(about sixty lines) rather than pulled in as a dependency.

Keys travel as raw bytes (32-byte X25519 and Ed25519 values), as they do on the wire.
No secret ever appears in an exception message: errors say what failed, never with what.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from bot.e2ee.codec import Writer

HASH_LEN: Final = 32
AEAD_KEY_LEN: Final = 16
AEAD_NONCE_LEN: Final = 12
CIPHER_SUITE: Final = 1

_LABEL_PREFIX: Final = b"MLS 1.0 "
_X25519_LEN: Final = 32

# RFC 9180 §7: KEM 0x0020 DHKEM(X25519, HKDF-SHA256), KDF 0x0001, AEAD 0x0001.
_KEM_SUITE_ID: Final = b"KEM\x00\x20"
_HPKE_SUITE_ID: Final = b"HPKE\x00\x20\x00\x01\x00\x01"
_HPKE_VERSION: Final = b"HPKE-v1"
_MODE_BASE: Final = b"\x00"


class CryptoError(ValueError):
    """A cryptographic check failed (bad tag, bad key, bad share); the message holds no secret."""


# --- Hash and KDF (RFC 5869 HKDF with SHA-256) ------------------------------------------


def hash_(data: bytes) -> bytes:
    """SHA-256, the suite's Hash (RFC 9420 §5.1)."""
    return hashlib.sha256(data).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869 §2.2). An empty salt equals HashLen zeros under HMAC's padding."""
    return _mac(salt, ikm)


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3), for lengths up to 255 * HASH_LEN."""
    if not 0 <= length <= 255 * HASH_LEN:
        raise ValueError(f"HKDF-Expand length {length} out of range")
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = _mac(prk, block + info + bytes([counter]))
        output += block
        counter += 1
    return output[:length]


# --- MLS labelled derivations (RFC 9420 §5.1, §5.2, §8, §9) ------------------------------


def expand_with_label(secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """ExpandWithLabel (RFC 9420 §8): HKDF-Expand over the encoded KDFLabel struct.

    ``KDFLabel { uint16 length; opaque label<V> = "MLS 1.0 " + label; opaque context<V>; }``
    binds every derived value to its purpose and size, so no two uses can collide.
    """
    info = Writer().u16(length).opaque(_LABEL_PREFIX + label.encode()).opaque(context)
    return expand(secret, bytes(info), length)


def derive_secret(secret: bytes, label: str) -> bytes:
    """DeriveSecret (RFC 9420 §8): ExpandWithLabel with an empty context and KDF.Nh bytes."""
    return expand_with_label(secret, label, b"", HASH_LEN)


def derive_tree_secret(secret: bytes, label: str, generation: int, length: int) -> bytes:
    """DeriveTreeSecret (RFC 9420 §9): the context is the ratchet generation as a uint32."""
    if not 0 <= generation < 1 << 32:
        raise ValueError(f"generation {generation} does not fit a uint32")
    return expand_with_label(secret, label, generation.to_bytes(4, "big"), length)


def ref_hash(label: str, value: bytes) -> bytes:
    """RefHash (RFC 9420 §5.2): ``Hash(RefHashInput { opaque label<V>; opaque value<V>; })``.

    The label is used as given, with no "MLS 1.0 " prefix: the callers' labels already
    carry it (``key_package_ref``, ``proposal_ref``).
    """
    return hash_(bytes(Writer().opaque(label.encode()).opaque(value)))


def key_package_ref(key_package: bytes) -> bytes:
    """KeyPackageRef (RFC 9420 §5.2) of an encoded KeyPackage: how a Welcome names its joiner."""
    return ref_hash("MLS 1.0 KeyPackage Reference", key_package)


def proposal_ref(authenticated_content: bytes) -> bytes:
    """ProposalRef (RFC 9420 §5.2) of an encoded AuthenticatedContent: how a Commit cites it."""
    return ref_hash("MLS 1.0 Proposal Reference", authenticated_content)


# --- Signatures (RFC 9420 §5.1.2, Ed25519) ---------------------------------------------


def _sign_content(label: str, content: bytes) -> bytes:
    return bytes(Writer().opaque(_LABEL_PREFIX + label.encode()).opaque(content))


def sign_with_label(private_key: bytes, label: str, content: bytes) -> bytes:
    """SignWithLabel (RFC 9420 §5.1.2): Ed25519 over ``SignContent {label<V>, content<V>}``.

    ``private_key`` is the 32-byte Ed25519 seed. The label keeps a signature made for one
    structure from being accepted as one over another.
    """
    try:
        key = Ed25519PrivateKey.from_private_bytes(private_key)
    except ValueError:
        raise CryptoError("not an Ed25519 private key") from None
    return key.sign(_sign_content(label, content))


def verify_with_label(public_key: bytes, label: str, content: bytes, signature: bytes) -> bool:
    """VerifyWithLabel (RFC 9420 §5.1.2); False for a bad signature or a malformed key."""
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, _sign_content(label, content))
    except (InvalidSignature, ValueError):
        return False
    return True


def generate_signature_key() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as (32-byte seed, 32-byte public key)."""
    key = Ed25519PrivateKey.generate()
    return _raw_private(key), key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- AEAD (AES-128-GCM) ----------------------------------------------------------------


def seal(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    """AES-128-GCM encryption; the 16-byte tag is appended, as MLS and HPKE expect."""
    _check_aead(key, nonce)
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def open_(key: bytes, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    """AES-128-GCM decryption; ``CryptoError`` when the tag does not verify."""
    _check_aead(key, nonce)
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise CryptoError("AEAD authentication failed") from None


def _check_aead(key: bytes, nonce: bytes) -> None:
    if len(key) != AEAD_KEY_LEN or len(nonce) != AEAD_NONCE_LEN:
        raise CryptoError(
            f"AES-128-GCM needs a {AEAD_KEY_LEN}-byte key and a {AEAD_NONCE_LEN}-byte nonce, "
            f"got {len(key)} and {len(nonce)} bytes"
        )


# --- HPKE base mode (RFC 9180) ---------------------------------------------------------


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """LabeledExtract (RFC 9180 §4)."""
    return extract(salt, _HPKE_VERSION + suite_id + label + ikm)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    """LabeledExpand (RFC 9180 §4)."""
    labeled_info = length.to_bytes(2, "big") + _HPKE_VERSION + suite_id + label + info
    return expand(prk, labeled_info, length)


def _raw_private(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _x25519_private(private_key: bytes) -> X25519PrivateKey:
    if len(private_key) != _X25519_LEN:
        raise CryptoError(f"an X25519 private key is {_X25519_LEN} bytes, not {len(private_key)}")
    return X25519PrivateKey.from_private_bytes(private_key)


def _x25519_public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(private: X25519PrivateKey, public_key: bytes) -> bytes:
    """X25519, refusing the all-zero output of a low-order share (RFC 9180 §7.1.4)."""
    if len(public_key) != _X25519_LEN:
        raise CryptoError(f"an X25519 public key is {_X25519_LEN} bytes, not {len(public_key)}")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        raise CryptoError("X25519 key agreement failed (low-order public key)") from None
    if not any(shared):
        raise CryptoError("X25519 key agreement gave the all-zero value")
    return shared


def _kem_shared_secret(dh: bytes, enc: bytes, public_r: bytes) -> bytes:
    """ExtractAndExpand with kem_context = enc || pkR (RFC 9180 §4.1)."""
    eae_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE_ID, eae_prk, b"shared_secret", enc + public_r, HASH_LEN)


def _key_schedule_base(shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """KeySchedule for mode_base with the default empty PSK (RFC 9180 §5.1): (key, base_nonce)."""
    psk_id_hash = _labeled_extract(_HPKE_SUITE_ID, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE_ID, b"", b"info_hash", info)
    context = _MODE_BASE + psk_id_hash + info_hash
    secret = _labeled_extract(_HPKE_SUITE_ID, shared_secret, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE_ID, secret, b"key", context, AEAD_KEY_LEN)
    nonce = _labeled_expand(_HPKE_SUITE_ID, secret, b"base_nonce", context, AEAD_NONCE_LEN)
    return key, nonce


def _hpke_seal_base(
    public_key: bytes, info: bytes, aad: bytes, plaintext: bytes, ephemeral: bytes
) -> tuple[bytes, bytes]:
    """SealBase (RFC 9180 §6.1) with the ephemeral key given, so tests can fix it.

    Single-shot, so the one message uses sequence number 0 and the nonce is base_nonce.
    """
    ephemeral_key = _x25519_private(ephemeral)
    enc = _x25519_public_bytes(ephemeral_key)
    dh = _dh(ephemeral_key, public_key)
    key, nonce = _key_schedule_base(_kem_shared_secret(dh, enc, public_key), info)
    return enc, seal(key, nonce, aad, plaintext)


def hpke_seal(public_key: bytes, info: bytes, aad: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    """HPKE SealBase (RFC 9180 §6.1) to an X25519 public key: (enc, ciphertext)."""
    ephemeral, _ = generate_hpke_key()
    return _hpke_seal_base(public_key, info, aad, plaintext, ephemeral)


def hpke_open(private_key: bytes, enc: bytes, info: bytes, aad: bytes, ciphertext: bytes) -> bytes:
    """HPKE OpenBase (RFC 9180 §6.1); ``CryptoError`` for any bad enc, key or ciphertext."""
    key_r = _x25519_private(private_key)
    dh = _dh(key_r, enc)
    key, nonce = _key_schedule_base(_kem_shared_secret(dh, enc, _x25519_public_bytes(key_r)), info)
    return open_(key, nonce, aad, ciphertext)


def derive_key_pair(secret: bytes) -> tuple[bytes, bytes]:
    """DeriveKeyPair for DHKEM(X25519) (RFC 9180 §7.1.3): (private, public) from a secret.

    MLS derives the path keys (RFC 9420 §7.4) and the external key (§8) this way, so every
    member computes the same key pair from the same secret. X25519 clamps inside the scalar
    multiplication, so the expanded 32 bytes are the private key as they are.
    """
    dkp_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"dkp_prk", secret)
    private = _labeled_expand(_KEM_SUITE_ID, dkp_prk, b"sk", b"", _X25519_LEN)
    return private, _x25519_public_bytes(_x25519_private(private))


def generate_hpke_key() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as (private, public), e.g. a KeyPackage's init_key."""
    return derive_key_pair(os.urandom(_X25519_LEN))


def _encrypt_context(label: str, context: bytes) -> bytes:
    return bytes(Writer().opaque(_LABEL_PREFIX + label.encode()).opaque(context))


def encrypt_with_label(
    public_key: bytes, label: str, context: bytes, plaintext: bytes
) -> tuple[bytes, bytes]:
    """EncryptWithLabel (RFC 9420 §5.1.3): SealBase with info = EncryptContext, aad empty.

    Returns (kem_output, ciphertext), the two fields of an HPKECiphertext.
    """
    return hpke_seal(public_key, _encrypt_context(label, context), b"", plaintext)


def decrypt_with_label(
    private_key: bytes, label: str, context: bytes, kem_output: bytes, ciphertext: bytes
) -> bytes:
    """DecryptWithLabel (RFC 9420 §5.1.3); ``CryptoError`` when the HPKECiphertext is bad."""
    return hpke_open(private_key, kem_output, _encrypt_context(label, context), b"", ciphertext)
