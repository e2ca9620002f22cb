"""Cipher suite 1 primitives and the MLS key schedule against published values.

The MLS working group's test vectors (tests/vectors/mls, cipher suite 1 entries) pin
every derivation byte for byte: crypto-basics (labelled helpers, signatures, HPKE
decryption), key-schedule (five chained epochs), secret-tree (1, 8 and 32 leaves),
transcript-hashes, and the Welcome of welcome.json as an end-to-end use of them. HPKE is
also checked against RFC 9180 Appendix A.1.1, since a round trip alone only shows the
code agrees with itself. The ratchet tests pin the out-of-order window Orange's openmls
uses (500 behind, 1000 ahead) and that each key is handed out once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bot.e2ee import crypto, schedule
from bot.e2ee.codec import Reader, Writer
from bot.e2ee.crypto import CryptoError
from bot.e2ee.schedule import (
    MAX_FORWARD_DISTANCE,
    NO_PSK,
    OUT_OF_ORDER_TOLERANCE,
    HashRatchet,
    RatchetError,
    SecretTree,
)

VECTORS = Path(__file__).parent / "vectors" / "mls"
h = bytes.fromhex


def _load(name: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    suite1 = [e for e in entries if int(e.get("cipher_suite", 1)) == crypto.CIPHER_SUITE]
    assert suite1, f"{name} has no cipher suite 1 entry"
    return suite1


# --- crypto-basics.json ------------------------------------------------------------------

BASICS = _load("crypto-basics.json")


@pytest.mark.parametrize("case", BASICS)
def test_ref_hash(case: dict[str, Any]) -> None:
    v = case["ref_hash"]
    assert crypto.ref_hash(v["label"], h(v["value"])).hex() == v["out"]


@pytest.mark.parametrize("case", BASICS)
def test_expand_with_label(case: dict[str, Any]) -> None:
    v = case["expand_with_label"]
    out = crypto.expand_with_label(h(v["secret"]), v["label"], h(v["context"]), v["length"])
    assert out.hex() == v["out"]


@pytest.mark.parametrize("case", BASICS)
def test_derive_secret(case: dict[str, Any]) -> None:
    v = case["derive_secret"]
    assert crypto.derive_secret(h(v["secret"]), v["label"]).hex() == v["out"]


@pytest.mark.parametrize("case", BASICS)
def test_derive_tree_secret(case: dict[str, Any]) -> None:
    v = case["derive_tree_secret"]
    out = crypto.derive_tree_secret(h(v["secret"]), v["label"], v["generation"], v["length"])
    assert out.hex() == v["out"]


@pytest.mark.parametrize("case", BASICS)
def test_sign_with_label(case: dict[str, Any]) -> None:
    v = case["sign_with_label"]
    pub, content, label = h(v["pub"]), h(v["content"]), v["label"]
    assert crypto.verify_with_label(pub, label, content, h(v["signature"]))
    ours = crypto.sign_with_label(h(v["priv"]), label, content)
    assert ours.hex() == v["signature"]  # Ed25519 is deterministic (RFC 8032)
    assert crypto.verify_with_label(pub, label, content, ours)
    assert not crypto.verify_with_label(pub, label + "x", content, ours)
    assert not crypto.verify_with_label(pub, label, content + b"\x00", ours)
    assert not crypto.verify_with_label(pub, label, content, bytes(64))
    assert not crypto.verify_with_label(pub[:31], label, content, ours)


@pytest.mark.parametrize("case", BASICS)
def test_encrypt_with_label(case: dict[str, Any]) -> None:
    v = case["encrypt_with_label"]
    priv, label, context, plaintext = h(v["priv"]), v["label"], h(v["context"]), h(v["plaintext"])
    out = crypto.decrypt_with_label(priv, label, context, h(v["kem_output"]), h(v["ciphertext"]))
    assert out == plaintext
    kem_output, ciphertext = crypto.encrypt_with_label(h(v["pub"]), label, context, plaintext)
    assert kem_output != h(v["kem_output"])  # a fresh ephemeral key each time
    assert crypto.decrypt_with_label(priv, label, context, kem_output, ciphertext) == plaintext


@pytest.mark.parametrize("case", BASICS)
def test_decrypt_with_label_refuses_tampering(case: dict[str, Any]) -> None:
    v = case["encrypt_with_label"]
    priv, label, context = h(v["priv"]), v["label"], h(v["context"])
    kem_output, ciphertext = h(v["kem_output"]), h(v["ciphertext"])
    flipped_ct = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    flipped_kem = bytes([kem_output[0] ^ 1]) + kem_output[1:]
    other_priv, _ = crypto.generate_hpke_key()
    for args in (
        (priv, label, context, kem_output, flipped_ct),
        (priv, label, context, flipped_kem, ciphertext),
        (priv, label + "x", context, kem_output, ciphertext),
        (priv, label, context + b"\x00", kem_output, ciphertext),
        (other_priv, label, context, kem_output, ciphertext),
        (priv, label, context, kem_output[:31], ciphertext),
        (priv, label, context, bytes(32), ciphertext),  # low-order point: all-zero DH
    ):
        with pytest.raises(CryptoError) as caught:
            crypto.decrypt_with_label(*args)
        assert v["priv"] not in str(caught.value)


# --- RFC 9180 HPKE -----------------------------------------------------------------------

# RFC 9180 Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode.
A11: dict[str, str] = {
    "info": "4f6465206f6e2061204772656369616e2055726e",
    "ikmE": "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234",
    "skEm": "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
    "pkEm": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "ikmR": "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037",
    "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
    "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
    "shared_secret": "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc",
    "key": "4531685d41d65f03dc48f6b8302c05b0",
    "base_nonce": "56d890e5accaaf011cff4b7d",
    "pt": "4265617574792069732074727574682c20747275746820626561757479",
    "aad0": "436f756e742d30",
    "ct0": "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a9"
    "6d8770ac83d07bea87e13c512a",
}


def test_derive_key_pair_rfc9180_a11() -> None:
    assert crypto.derive_key_pair(h(A11["ikmE"])) == (h(A11["skEm"]), h(A11["pkEm"]))
    assert crypto.derive_key_pair(h(A11["ikmR"])) == (h(A11["skRm"]), h(A11["pkRm"]))


def test_hpke_internals_rfc9180_a11() -> None:
    dh = crypto._dh(crypto._x25519_private(h(A11["skEm"])), h(A11["pkRm"]))
    shared = crypto._kem_shared_secret(dh, h(A11["pkEm"]), h(A11["pkRm"]))
    assert shared.hex() == A11["shared_secret"]
    key, nonce = crypto._key_schedule_base(shared, h(A11["info"]))
    assert (key.hex(), nonce.hex()) == (A11["key"], A11["base_nonce"])


def test_hpke_seal_open_rfc9180_a11() -> None:
    info, aad, pt = h(A11["info"]), h(A11["aad0"]), h(A11["pt"])
    enc, ct = crypto._hpke_seal_base(h(A11["pkRm"]), info, aad, pt, h(A11["skEm"]))
    assert (enc.hex(), ct.hex()) == (A11["pkEm"], A11["ct0"])
    assert crypto.hpke_open(h(A11["skRm"]), enc, info, aad, ct) == pt


def test_hpke_round_trip_and_tampering() -> None:
    priv, pub = crypto.generate_hpke_key()
    assert crypto.derive_key_pair(priv)[0] != priv  # derive_key_pair hashes, never echoes
    for plaintext in (b"", b"x", bytes(range(256)) * 5):
        enc, ct = crypto.hpke_seal(pub, b"info", b"aad", plaintext)
        assert len(enc) == 32 and len(ct) == len(plaintext) + 16
        assert crypto.hpke_open(priv, enc, b"info", b"aad", ct) == plaintext
        for bad in (
            (priv, enc, b"info", b"aad", ct[:-1] + bytes([ct[-1] ^ 0x80])),
            (priv, enc[:-1] + bytes([enc[-1] ^ 1]), b"info", b"aad", ct),
            (priv, enc, b"Info", b"aad", ct),
            (priv, enc, b"info", b"", ct),
            (priv, enc, b"info", b"aad", ct[:15]),
        ):
            with pytest.raises(CryptoError):
                crypto.hpke_open(*bad)
    with pytest.raises(CryptoError):
        crypto.hpke_seal(bytes(32), b"", b"", b"to a low-order point")
    with pytest.raises(CryptoError):
        crypto.hpke_seal(pub[:16], b"", b"", b"short key")


def test_aead_seal_open() -> None:
    key, nonce = bytes(range(16)), bytes(12)
    ct = crypto.seal(key, nonce, b"aad", b"frame")
    assert crypto.open_(key, nonce, b"aad", ct) == b"frame"
    with pytest.raises(CryptoError):
        crypto.open_(key, nonce, b"other", ct)
    with pytest.raises(CryptoError):
        crypto.open_(key, nonce, b"aad", bytes([ct[0] ^ 1]) + ct[1:])
    with pytest.raises(CryptoError):
        crypto.seal(bytes(32), nonce, b"", b"")  # AES-256 key: not this suite


def test_hkdf_rfc5869_case_1() -> None:
    prk = crypto.extract(h("000102030405060708090a0b0c"), bytes([0x0B]) * 22)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = crypto.expand(prk, h("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_signature_and_hpke_key_generation() -> None:
    sig_priv, sig_pub = crypto.generate_signature_key()
    assert len(sig_priv) == len(sig_pub) == 32
    signature = crypto.sign_with_label(sig_priv, "LeafNodeTBS", b"leaf")
    assert crypto.verify_with_label(sig_pub, "LeafNodeTBS", b"leaf", signature)
    hpke_priv, hpke_pub = crypto.generate_hpke_key()
    assert len(hpke_priv) == len(hpke_pub) == 32
    with pytest.raises(CryptoError):
        crypto.sign_with_label(sig_priv[:31], "x", b"")


def test_refs_use_their_labels() -> None:
    value = b"\x01\x02"
    assert crypto.key_package_ref(value) == crypto.ref_hash("MLS 1.0 KeyPackage Reference", value)
    assert crypto.proposal_ref(value) == crypto.ref_hash("MLS 1.0 Proposal Reference", value)


# --- key-schedule.json -------------------------------------------------------------------

EPOCH_FIELDS = (
    "sender_data_secret",
    "encryption_secret",
    "exporter_secret",
    "external_secret",
    "confirmation_key",
    "membership_key",
    "resumption_psk",
    "epoch_authenticator",
    "init_secret",
)


def _group_context(group_id: bytes, epoch: int, tree_hash: bytes, cth: bytes) -> bytes:
    """GroupContext (RFC 9420 §8.1) with no extensions."""
    w = Writer().u16(1).u16(crypto.CIPHER_SUITE).opaque(group_id).u64(epoch)
    return bytes(w.opaque(tree_hash).opaque(cth).opaque(b""))


@pytest.mark.parametrize("case", _load("key-schedule.json"))
def test_key_schedule(case: dict[str, Any]) -> None:
    init_secret = h(case["initial_init_secret"])
    for epoch, v in enumerate(case["epochs"]):
        context = _group_context(
            h(case["group_id"]), epoch, h(v["tree_hash"]), h(v["confirmed_transcript_hash"])
        )
        assert context.hex() == v["group_context"]
        joiner = schedule.joiner_secret(init_secret, h(v["commit_secret"]), context)
        assert joiner.hex() == v["joiner_secret"]
        welcome, secrets = schedule.epoch_secrets(joiner, h(v["psk_secret"]), context)
        assert welcome.hex() == v["welcome_secret"]
        assert schedule.welcome_secret(joiner, h(v["psk_secret"])) == welcome
        for name in EPOCH_FIELDS:
            assert getattr(secrets, name).hex() == v[name], f"epoch {epoch} {name}"
        assert crypto.derive_key_pair(secrets.external_secret)[1].hex() == v["external_pub"]
        ex = v["exporter"]
        exported = schedule.exporter(
            secrets.exporter_secret, ex["label"], h(ex["context"]), ex["length"]
        )
        assert exported.hex() == ex["secret"]
        init_secret = secrets.init_secret


def test_epoch_secrets_repr_holds_no_secret() -> None:
    _, secrets = schedule.epoch_secrets(bytes(32), NO_PSK, b"context")
    text = repr(secrets)
    assert text == "EpochSecrets()"
    for name in EPOCH_FIELDS:
        assert getattr(secrets, name).hex() not in text


def test_welcome_key_nonce_sizes() -> None:
    key, nonce = schedule.welcome_key_nonce(bytes(32))
    assert len(key) == crypto.AEAD_KEY_LEN and len(nonce) == crypto.AEAD_NONCE_LEN
    assert key == crypto.expand_with_label(bytes(32), "key", b"", 16)
    assert nonce == crypto.expand_with_label(bytes(32), "nonce", b"", 12)


# --- transcript-hashes.json --------------------------------------------------------------


@pytest.mark.parametrize("case", _load("transcript-hashes.json"))
def test_transcript_hashes(case: dict[str, Any]) -> None:
    content = h(case["authenticated_content"])
    # AuthenticatedContent of a Commit ends with its confirmation_tag, a 32-byte opaque<V>;
    # what precedes it is the ConfirmedTranscriptHashInput (wire_format, content, signature).
    assert content[-33] == 32
    confirmed_input, tag = content[:-33], content[-32:]
    confirmed = schedule.confirmed_transcript_hash(
        h(case["interim_transcript_hash_before"]), confirmed_input
    )
    assert confirmed.hex() == case["confirmed_transcript_hash_after"]
    key = h(case["confirmation_key"])
    assert schedule.confirmation_tag(key, confirmed) == tag
    assert schedule.verify_confirmation_tag(key, confirmed, tag)
    assert not schedule.verify_confirmation_tag(key, confirmed, bytes(32))
    interim = schedule.interim_transcript_hash(confirmed, tag)
    assert interim.hex() == case["interim_transcript_hash_after"]


# --- secret-tree.json --------------------------------------------------------------------

SECRET_TREES = _load("secret-tree.json")


@pytest.mark.parametrize("case", SECRET_TREES, ids=lambda c: f"{len(c['leaves'])}-leaves")
def test_sender_data_key_nonce(case: dict[str, Any]) -> None:
    v = case["sender_data"]
    key, nonce = schedule.sender_data_key_nonce(h(v["sender_data_secret"]), h(v["ciphertext"]))
    assert (key.hex(), nonce.hex()) == (v["key"], v["nonce"])


@pytest.mark.parametrize("case", SECRET_TREES, ids=lambda c: f"{len(c['leaves'])}-leaves")
def test_secret_tree(case: dict[str, Any]) -> None:
    tree = SecretTree(h(case["encryption_secret"]), len(case["leaves"]))
    for leaf, generations in enumerate(case["leaves"]):
        for v in generations:
            handshake = tree.handshake(leaf).key_nonce(v["generation"])
            application = tree.application(leaf).key_nonce(v["generation"])
            assert handshake == (h(v["handshake_key"]), h(v["handshake_nonce"]))
            assert application == (h(v["application_key"]), h(v["application_nonce"]))
    # Every leaf's ratchets exist, so §9.2 leaves no tree-node secret behind.
    assert tree.stored_node_count == 0


def test_secret_tree_sender_matches_receiver_and_deletes_parents() -> None:
    sender, receiver = SecretTree(b"\x07" * 32, 5), SecretTree(b"\x07" * 32, 5)
    assert sender.stored_node_count == 1
    for _ in range(3):
        generation, key, nonce = sender.application(4).next()
        assert receiver.application(4).key_nonce(generation) == (key, nonce)
    # Reaching leaf 4 of an 8-wide tree splits the root, node 11 and node 9, consuming leaf 4:
    # the siblings on the way (3, 13, 10) remain until their own leaves are asked for.
    assert sender.stored_node_count == 3
    assert sender.handshake(4).key_nonce(0) != sender.application(4).key_nonce(3)
    with pytest.raises(ValueError):
        sender.application(5)
    assert "07070707" not in repr(sender) and "07070707" not in repr(sender.application(4))


def test_reuse_guard() -> None:
    nonce = h("000102030405060708090a0b")
    assert schedule.apply_reuse_guard(nonce, h("ff00ff00")).hex() == "ff01fd030405060708090a0b"
    with pytest.raises(ValueError):
        schedule.apply_reuse_guard(nonce, b"\x00")


# --- Hash ratchet window (Orange: SenderRatchetConfiguration(500, 1000)) -------------------


def _reference_keys(count: int) -> list[tuple[bytes, bytes]]:
    ratchet = HashRatchet(b"\x42" * 32)
    return [ratchet.next()[1:] for _ in range(count)]


REFERENCE = _reference_keys(1102)


def test_ratchet_out_of_order_within_tolerance() -> None:
    ratchet = HashRatchet(b"\x42" * 32)
    for generation in (10, 3, 9, 0, 11, 4):
        assert ratchet.key_nonce(generation) == REFERENCE[generation]
    assert ratchet.retained_generations == (1, 2, 5, 6, 7, 8)
    assert ratchet.generation == 12


def test_ratchet_refuses_replay_and_deletes_used_keys() -> None:
    ratchet = HashRatchet(b"\x42" * 32)
    ratchet.key_nonce(5)
    ratchet.key_nonce(2)
    assert 2 not in ratchet.retained_generations
    for generation in (5, 2):
        with pytest.raises(RatchetError, match="already used"):
            ratchet.key_nonce(generation)
    with pytest.raises(RatchetError):
        ratchet.key_nonce(-1)


def test_ratchet_refuses_too_far_ahead() -> None:
    ratchet = HashRatchet(b"\x42" * 32)
    with pytest.raises(RatchetError, match="ahead"):
        ratchet.key_nonce(MAX_FORWARD_DISTANCE + 1)
    assert ratchet.generation == 0  # the refused jump derived nothing
    assert ratchet.key_nonce(MAX_FORWARD_DISTANCE) == REFERENCE[MAX_FORWARD_DISTANCE]
    assert ratchet.key_nonce(2 * MAX_FORWARD_DISTANCE + 1 - 900) == REFERENCE[1101]


def test_ratchet_window_keeps_only_tolerance_past_keys() -> None:
    ratchet = HashRatchet(b"\x42" * 32)
    ratchet.key_nonce(MAX_FORWARD_DISTANCE)
    kept = ratchet.retained_generations
    # The window is the 500 generations below the head; the newest of them was just used.
    assert len(kept) == OUT_OF_ORDER_TOLERANCE - 1
    assert kept[0] == MAX_FORWARD_DISTANCE + 1 - OUT_OF_ORDER_TOLERANCE
    oldest = ratchet.generation - OUT_OF_ORDER_TOLERANCE
    assert ratchet.key_nonce(oldest) == REFERENCE[oldest]
    with pytest.raises(RatchetError, match="behind"):
        ratchet.key_nonce(oldest - 1)
    ratchet.key_nonce(ratchet.generation)  # one more message moves the window on
    assert min(ratchet.retained_generations) == ratchet.generation - OUT_OF_ORDER_TOLERANCE


def test_ratchet_send_side() -> None:
    ratchet = HashRatchet(b"\x42" * 32)
    sent = [ratchet.next() for _ in range(3)]
    assert [g for g, _, _ in sent] == [0, 1, 2]
    assert [(k, n) for _, k, n in sent] == REFERENCE[:3]
    assert ratchet.retained_generations == ()
    with pytest.raises(RatchetError):
        ratchet.key_nonce(1)


def test_ratchet_last_generation() -> None:
    ratchet = HashRatchet(b"\x42" * 32, generation=schedule.MAX_GENERATION)
    assert ratchet.next()[0] == schedule.MAX_GENERATION
    with pytest.raises(RatchetError, match="last generation"):
        ratchet.next()


# --- welcome.json: the schedule as a joiner uses it (RFC 9420 §12.4.3.1) -----------------


def _group_info_fields(group_info: bytes) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """(group_context, confirmed_transcript_hash, confirmation_tag, tbs, signature)."""
    r = Reader(group_info, "GroupInfo")
    start = len(group_info)
    r.u16(), r.u16(), r.opaque(), r.u64(), r.opaque()
    cth = r.opaque()
    r.opaque()  # GroupContext extensions
    context = group_info[: start - r.remaining]
    r.opaque()  # GroupInfo extensions
    tag = r.opaque()
    r.u32()
    tbs = group_info[: start - r.remaining]
    signature = r.opaque()
    r.done()
    return context, cth, tag, tbs, signature


@pytest.mark.parametrize("case", _load("welcome.json"))
def test_welcome_decrypts_with_the_schedule(case: dict[str, Any]) -> None:
    key_package = h(case["key_package"])[4:]  # MLSMessage header: version, wire_format 5
    r = Reader(h(case["welcome"]), "Welcome")
    assert (r.u16(), r.u16(), r.u16()) == (1, 3, crypto.CIPHER_SUITE)
    secrets = r.vector(lambda s: (s.opaque(), s.opaque(), s.opaque()))
    encrypted_group_info = r.opaque()
    r.done()
    ours = [s for s in secrets if s[0] == crypto.key_package_ref(key_package)]
    assert len(ours) == 1
    group_secrets = crypto.decrypt_with_label(
        h(case["init_priv"]), "Welcome", encrypted_group_info, ours[0][1], ours[0][2]
    )
    gs = Reader(group_secrets, "GroupSecrets")
    joiner = gs.opaque()
    gs.optional(Reader.opaque)
    assert gs.vector(Reader.opaque) == []  # no PSKs: psk_secret is all zeros
    gs.done()
    key, nonce = schedule.welcome_key_nonce(schedule.welcome_secret(joiner, NO_PSK))
    group_info = crypto.open_(key, nonce, b"", encrypted_group_info)
    context, cth, tag, tbs, signature = _group_info_fields(group_info)
    assert crypto.verify_with_label(h(case["signer_pub"]), "GroupInfoTBS", tbs, signature)
    _, epoch = schedule.epoch_secrets(joiner, NO_PSK, context)
    assert schedule.verify_confirmation_tag(epoch.confirmation_key, cth, tag)
