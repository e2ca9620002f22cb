"""RFC 9420 structures and message protection against the MLS working group's vectors.

``bot.e2ee.messages`` must decode and re-encode every structure byte for byte (signatures
and hashes are over those bytes), ``bot.e2ee.protect`` must open the vectors'
PrivateMessages and refuse tampered, replayed, foreign and stale ones with a named step,
and nothing malformed may escape decoding as anything but ``DecodeError``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.e2ee.codec import DecodeError, Reader, Writer
from bot.e2ee.messages import (
    Add,
    AuthenticatedContent,
    Commit,
    ContentType,
    ExternalInit,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    GroupContextExtensions,
    GroupInfo,
    GroupSecrets,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    MLSMessage,
    Node,
    ParentNode,
    PathSecret,
    PreSharedKey,
    PrivateContentAAD,
    PrivateMessage,
    PrivateMessageContent,
    Proposal,
    PublicMessage,
    ReInit,
    Remove,
    Sender,
    SenderData,
    SenderDataAAD,
    Update,
    Welcome,
    WireFormat,
    decode_ratchet_tree,
    encode_ratchet_tree,
)

VECTORS = Path(__file__).parent / "vectors" / "mls"


def _load(name: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((VECTORS / name).read_text())
    return data


def _hex(vector: dict[str, Any], key: str) -> bytes:
    return bytes.fromhex(vector[key])


try:
    from bot.e2ee import crypto, schedule
except ImportError as error:  # pragma: no cover - only while the modules are being written
    crypto = schedule = None  # type: ignore[assignment]
    _MISSING = f"bot.e2ee.crypto / bot.e2ee.schedule not importable: {error}"
else:
    _MISSING = ""

needs_crypto = pytest.mark.skipif(bool(_MISSING), reason=_MISSING or "present")


# --- messages.json: decode and re-encode every structure ----------------------------------

MESSAGES = _load("messages.json")

STRUCTURES: dict[str, Callable[[bytes], Any]] = {
    "mls_welcome": MLSMessage.from_bytes,
    "mls_group_info": MLSMessage.from_bytes,
    "mls_key_package": MLSMessage.from_bytes,
    "group_secrets": GroupSecrets.from_bytes,
    "add_proposal": Add.from_bytes,
    "update_proposal": Update.from_bytes,
    "remove_proposal": Remove.from_bytes,
    "pre_shared_key_proposal": PreSharedKey.from_bytes,
    "re_init_proposal": ReInit.from_bytes,
    "external_init_proposal": ExternalInit.from_bytes,
    "group_context_extensions_proposal": GroupContextExtensions.from_bytes,
    "commit": Commit.from_bytes,
    "public_message_application": MLSMessage.from_bytes,
    "public_message_proposal": MLSMessage.from_bytes,
    "public_message_commit": MLSMessage.from_bytes,
    "private_message": MLSMessage.from_bytes,
}

EXPECTED_BODY: dict[str, tuple[type, ContentType | None]] = {
    "mls_welcome": (Welcome, None),
    "mls_group_info": (GroupInfo, None),
    "mls_key_package": (KeyPackage, None),
    "public_message_application": (PublicMessage, ContentType.APPLICATION),
    "public_message_proposal": (PublicMessage, ContentType.PROPOSAL),
    "public_message_commit": (PublicMessage, ContentType.COMMIT),
    "private_message": (PrivateMessage, None),
}


@pytest.mark.parametrize("field", sorted(STRUCTURES))
def test_messages_vectors_round_trip(field: str) -> None:
    decode = STRUCTURES[field]
    for index, vector in enumerate(MESSAGES):
        data = _hex(vector, field)
        value = decode(data)
        assert value.to_bytes() == data, f"{field} #{index} re-encodes differently"
        if field in EXPECTED_BODY:
            kind, content_type = EXPECTED_BODY[field]
            assert isinstance(value.body, kind), f"{field} #{index}"
            if content_type is not None:
                assert isinstance(value.body, PublicMessage)
                assert value.body.content.content_type is content_type


def test_messages_vectors_ratchet_tree_round_trip() -> None:
    for index, vector in enumerate(MESSAGES):
        data = _hex(vector, "ratchet_tree")
        nodes = decode_ratchet_tree(data)
        assert encode_ratchet_tree(nodes) == data, f"ratchet_tree #{index}"
        assert encode_ratchet_tree([*nodes, None, None]) == data  # trailing blanks dropped


def test_messages_vectors_count() -> None:
    assert len(MESSAGES) == 20


# --- deserialization.json: varint vector headers ---------------------------------------------


@pytest.mark.parametrize("vector", _load("deserialization.json"), ids=lambda v: v["vlbytes_header"])
def test_vector_length_headers(vector: dict[str, Any]) -> None:
    header = _hex(vector, "vlbytes_header")
    r = Reader(header)
    assert r.varint() == vector["length"]
    r.done()
    assert bytes(Writer().varint(vector["length"])) == header


# --- ratchet tree checks and leaf signatures (tree-validation.json) ---------------------------


def test_ratchet_tree_refuses_trailing_blank_and_misplaced_nodes() -> None:
    nodes = decode_ratchet_tree(_hex(MESSAGES[0], "ratchet_tree"))
    leaf = next(n for n in nodes if isinstance(n, LeafNode))
    parent = ParentNode(b"\x01" * 32, b"", (1,))
    bad_trees = (
        bytes(Writer().vector([None], lambda w, n: w.u8(0))),  # only a blank node
        bytes(Writer().opaque(b"")),  # empty
        encode_ratchet_tree([parent]),  # a parent at a leaf position
        encode_ratchet_tree([leaf, leaf]),  # a leaf at a parent position
        encode_ratchet_tree([leaf, parent, leaf])[:-1],  # truncated
    )
    for data in bad_trees:
        with pytest.raises(DecodeError):
            decode_ratchet_tree(data)
    good: list[Node | None] = [leaf, parent, leaf]
    assert decode_ratchet_tree(encode_ratchet_tree(good)) == good


@needs_crypto
@pytest.mark.parametrize("index", range(len(_load("tree-validation.json"))))
def test_tree_validation_leaf_signatures(index: int) -> None:
    """Every leaf of the vectors' trees verifies over ``LeafNode.tbs`` (§7.2): update and
    commit leaves bind group_id and leaf index, key_package leaves do not."""
    vector = _load("tree-validation.json")[index]
    group_id = _hex(vector, "group_id")
    data = _hex(vector, "tree")
    nodes = decode_ratchet_tree(data)
    assert encode_ratchet_tree(nodes) == data
    leaves = [(i // 2, n) for i, n in enumerate(nodes) if isinstance(n, LeafNode)]
    assert leaves
    for leaf_index, leaf in leaves:
        tbs = leaf.tbs(group_id, leaf_index)
        assert crypto.verify_with_label(leaf.signature_key, "LeafNodeTBS", tbs, leaf.signature)
        if leaf.leaf_node_source is not LeafNodeSource.KEY_PACKAGE:
            wrong = leaf.tbs(group_id, leaf_index + 1)
            assert not crypto.verify_with_label(
                leaf.signature_key, "LeafNodeTBS", wrong, leaf.signature
            )


# --- message-protection.json -------------------------------------------------------------------

PROTECTION = _load("message-protection.json")[0]
SENDER = 1  # "use the member with LeafIndex 1 as the sender"


def _context(vector: dict[str, Any] = PROTECTION, **changes: Any) -> GroupContext:
    context = GroupContext(
        vector["cipher_suite"],
        _hex(vector, "group_id"),
        vector["epoch"],
        _hex(vector, "tree_hash"),
        _hex(vector, "confirmed_transcript_hash"),
    )
    return dataclasses.replace(context, **changes)


def _lookup(index: int) -> bytes | None:
    return _hex(PROTECTION, "signature_pub") if index == SENDER else None


def _tree() -> Any:
    return schedule.SecretTree(_hex(PROTECTION, "encryption_secret"), 2)


def _open(message: PrivateMessage, tree: Any = None, **kwargs: Any) -> Any:
    from bot.e2ee.protect import unprotect_private

    options: dict[str, Any] = {
        "group_context": _context(),
        "sender_data_secret": _hex(PROTECTION, "sender_data_secret"),
        "secret_tree": tree if tree is not None else _tree(),
        "signature_key": _lookup,
    }
    options.update(kwargs)
    return unprotect_private(message, **options)


def _private(kind: str) -> PrivateMessage:
    body = MLSMessage.from_bytes(_hex(PROTECTION, f"{kind}_priv")).body
    assert isinstance(body, PrivateMessage)
    return body


def _raw(content: Any) -> bytes:
    return content if isinstance(content, bytes) else bytes(content.to_bytes())


@needs_crypto
@pytest.mark.parametrize("kind", ["application", "proposal", "commit"])
def test_protection_vector_private_messages_open(kind: str) -> None:
    opened = _open(_private(kind))
    assert opened.leaf_index == SENDER
    assert opened.content.wire_format is WireFormat.PRIVATE_MESSAGE
    assert opened.content.content.sender == Sender.member(SENDER)
    assert _raw(opened.content.content.content) == _hex(PROTECTION, kind)
    assert (opened.content.auth.confirmation_tag is not None) == (kind == "commit")


@needs_crypto
@pytest.mark.parametrize("kind", ["proposal", "commit"])
def test_protection_vector_public_messages_verify(kind: str) -> None:
    from bot.e2ee.protect import ProtectionError, unprotect_public

    body = MLSMessage.from_bytes(_hex(PROTECTION, f"{kind}_pub")).body
    assert isinstance(body, PublicMessage)
    options: dict[str, Any] = {
        "group_context": _context(),
        "membership_key": _hex(PROTECTION, "membership_key"),
        "signature_key": _lookup,
    }
    authenticated = unprotect_public(body, **options)
    assert _raw(authenticated.content.content) == _hex(PROTECTION, kind)
    options["membership_key"] = bytes(32)
    with pytest.raises(ProtectionError, match="membership tag"):
        unprotect_public(body, **options)


@needs_crypto
@pytest.mark.parametrize("kind", ["application", "proposal"])
def test_protect_private_round_trip(kind: str) -> None:
    from bot.e2ee.protect import protect_private

    raw = _hex(PROTECTION, kind)
    content = FramedContent(
        _hex(PROTECTION, "group_id"),
        PROTECTION["epoch"],
        Sender.member(SENDER),
        b"",
        ContentType.APPLICATION if kind == "application" else ContentType.PROPOSAL,
        raw if kind == "application" else Proposal.from_bytes(raw),
    )
    sender_tree, receiver_tree = _tree(), _tree()
    for generation in range(3):
        message = protect_private(
            content,
            group_context=_context(),
            sender_data_secret=_hex(PROTECTION, "sender_data_secret"),
            secret_tree=sender_tree,
            signature_private_key=_hex(PROTECTION, "signature_priv"),
        )
        wire = MLSMessage(message).to_bytes()
        received = MLSMessage.from_bytes(wire).body
        assert isinstance(received, PrivateMessage)
        opened = _open(received, receiver_tree)
        assert (opened.leaf_index, opened.generation) == (SENDER, generation)
        assert _raw(opened.content.content.content) == raw


@needs_crypto
def test_commit_sign_then_encrypt_round_trip() -> None:
    """A Commit's confirmation tag sits between signing and encrypting (§6.1, §8.2)."""
    from bot.e2ee.protect import encrypt_private_message, sign_framed_content

    content = FramedContent(
        _hex(PROTECTION, "group_id"),
        PROTECTION["epoch"],
        Sender.member(SENDER),
        b"aad",
        ContentType.COMMIT,
        Commit.from_bytes(_hex(PROTECTION, "commit")),
    )
    signature = sign_framed_content(
        content, WireFormat.PRIVATE_MESSAGE, _context(), _hex(PROTECTION, "signature_priv")
    )
    auth = FramedContentAuthData(signature, confirmation_tag=bytes(range(32)))
    authenticated = AuthenticatedContent(WireFormat.PRIVATE_MESSAGE, content, auth)
    message = encrypt_private_message(
        authenticated,
        sender_data_secret=_hex(PROTECTION, "sender_data_secret"),
        secret_tree=_tree(),
        padding=7,
    )
    opened = _open(message)
    assert opened.content == authenticated


def _seal_private(plaintext: bytes, generation: int = 0) -> PrivateMessage:
    """A PrivateMessage around an arbitrary plaintext, to reach the checks past decryption."""
    tree = _tree()
    ratchet = tree.application(SENDER)
    for _ in range(generation + 1):
        gen, key, nonce = ratchet.next()
    guard = b"\x01\x02\x03\x04"
    group_id, epoch = _hex(PROTECTION, "group_id"), PROTECTION["epoch"]
    aad = PrivateContentAAD(group_id, epoch, ContentType.APPLICATION, b"").to_bytes()
    ciphertext = crypto.seal(key, schedule.apply_reuse_guard(nonce, guard), aad, plaintext)
    sd_key, sd_nonce = schedule.sender_data_key_nonce(
        _hex(PROTECTION, "sender_data_secret"), ciphertext
    )
    sd_aad = SenderDataAAD(group_id, epoch, ContentType.APPLICATION).to_bytes()
    sender_data = SenderData(SENDER, gen, guard).to_bytes()
    encrypted = crypto.seal(sd_key, sd_nonce, sd_aad, sender_data)
    return PrivateMessage(group_id, epoch, ContentType.APPLICATION, b"", encrypted, ciphertext)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@needs_crypto
def test_unprotect_refuses_each_failure_with_its_step() -> None:
    from bot.e2ee.protect import ProtectionError

    message = _private("application")
    content = PrivateMessageContent(b"hello", FramedContentAuthData(b"\x00" * 64)).to_bytes()
    cases: list[tuple[str, Callable[[], object]]] = [
        ("wrong group", lambda: _open(message, group_context=_context(group_id=b"other"))),
        ("wrong epoch", lambda: _open(message, group_context=_context(epoch=1))),
        (
            "sender data",
            lambda: _open(
                dataclasses.replace(
                    message, encrypted_sender_data=_flip(message.encrypted_sender_data, 0)
                )
            ),
        ),
        ("sender data", lambda: _open(message, signature_key=lambda i: None)),
        ("content", lambda: _open(dataclasses.replace(message, authenticated_data=b"x"))),
        (
            "content",
            lambda: _open(dataclasses.replace(message, ciphertext=_flip(message.ciphertext, 40))),
        ),
        ("signature", lambda: _open(message, signature_key=lambda i: bytes(32))),
        ("padding", lambda: _open(_seal_private(content + b"\x00\x00\x01"))),
        ("content", lambda: _open(_seal_private(b"\x45"))),
        ("signature", lambda: _open(_seal_private(content + bytes(9)))),
    ]
    for step, attempt in cases:
        with pytest.raises(ProtectionError) as caught:
            attempt()
        assert caught.value.step == step, f"expected {step}, got {caught.value}"


@needs_crypto
def test_unprotect_refuses_replay_and_far_generations() -> None:
    from bot.e2ee.protect import ProtectionError

    tree = _tree()
    message = _private("application")
    _open(message, tree)
    with pytest.raises(ProtectionError) as caught:
        _open(message, tree)
    assert caught.value.step == "generation"
    content = PrivateMessageContent(b"x", FramedContentAuthData(b"")).to_bytes()
    with pytest.raises(ProtectionError) as caught:
        _open(_seal_private(content, generation=5000))
    assert caught.value.step == "generation"


@needs_crypto
def test_protection_errors_carry_no_key_bytes() -> None:
    from bot.e2ee.protect import ProtectionError

    secrets = [_hex(PROTECTION, k) for k in ("sender_data_secret", "encryption_secret")]
    message = _private("application")
    attempts: list[Callable[[], object]] = [
        lambda: _open(message, signature_key=lambda i: bytes(32)),
        lambda: _open(dataclasses.replace(message, ciphertext=_flip(message.ciphertext, 3))),
    ]
    for attempt in attempts:
        with pytest.raises(ProtectionError) as caught:
            attempt()
        text = str(caught.value)
        assert not any(s.hex() in text or repr(s) in text for s in secrets)


@needs_crypto
def test_application_data_is_refused_as_public_message() -> None:
    from bot.e2ee.protect import ProtectionError, unprotect_public

    body = MLSMessage.from_bytes(_hex(MESSAGES[0], "public_message_application")).body
    assert isinstance(body, PublicMessage)
    context = _context(group_id=body.content.group_id, epoch=body.content.epoch)
    with pytest.raises(ProtectionError, match="wire format"):
        unprotect_public(
            body, group_context=context, membership_key=bytes(32), signature_key=_lookup
        )


# --- welcome.json ------------------------------------------------------------------------------


@needs_crypto
@pytest.mark.parametrize("index", range(len(_load("welcome.json"))))
def test_welcome_vector(index: int) -> None:
    """§12.4.3.1: find our entry by KeyPackageRef, open GroupSecrets with the init key, open
    the GroupInfo with the welcome key, check its signature and confirmation tag."""
    vector = _load("welcome.json")[index]
    key_package = MLSMessage.from_bytes(_hex(vector, "key_package")).body
    welcome = MLSMessage.from_bytes(_hex(vector, "welcome")).body
    assert isinstance(key_package, KeyPackage)
    assert isinstance(welcome, Welcome)
    leaf = key_package.leaf_node
    assert crypto.verify_with_label(
        leaf.signature_key, "LeafNodeTBS", leaf.tbs(None, None), leaf.signature
    )
    assert crypto.verify_with_label(
        leaf.signature_key, "KeyPackageTBS", key_package.tbs(), key_package.signature
    )
    ref = crypto.key_package_ref(key_package.to_bytes())
    (entry,) = [s for s in welcome.secrets if s.new_member == ref]
    sealed = entry.encrypted_group_secrets
    group_secrets = GroupSecrets.from_bytes(
        crypto.decrypt_with_label(
            _hex(vector, "init_priv"),
            "Welcome",
            welcome.encrypted_group_info,
            sealed.kem_output,
            sealed.ciphertext,
        )
    )
    assert group_secrets.psks == ()
    welcome_secret, _ = schedule.epoch_secrets(group_secrets.joiner_secret, schedule.NO_PSK, b"")
    key, nonce = schedule.welcome_key_nonce(welcome_secret)
    group_info = GroupInfo.from_bytes(crypto.open_(key, nonce, b"", welcome.encrypted_group_info))
    assert crypto.verify_with_label(
        _hex(vector, "signer_pub"), "GroupInfoTBS", group_info.tbs(), group_info.signature
    )
    context = group_info.group_context
    _, secrets = schedule.epoch_secrets(
        group_secrets.joiner_secret, schedule.NO_PSK, context.to_bytes()
    )
    assert schedule.verify_confirmation_tag(
        secrets.confirmation_key, context.confirmed_transcript_hash, group_info.confirmation_tag
    )


# --- secrets stay out of repr ------------------------------------------------------------------


def test_group_secrets_repr_hides_secrets() -> None:
    secrets = GroupSecrets(b"\xaa" * 32, PathSecret(b"\xbb" * 32))
    text = repr(secrets) + repr(PathSecret(b"\xcc" * 32))
    assert "aa" not in text and "bb" not in text and "cc" not in text
    assert "xaa" not in text
    assert GroupSecrets.from_bytes(secrets.to_bytes()) == secrets


def test_inconsistent_structures_are_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        Sender(Sender.member(0).sender_type)
    with pytest.raises(ValueError):
        FramedContent(b"g", 0, Sender.member(0), b"", ContentType.COMMIT, b"not a commit")
    with pytest.raises(ValueError):
        SenderData(0, 0, b"\x00")


# --- malformed input: only DecodeError --------------------------------------------------------

VALID_MESSAGES = [
    _hex(vector, field)
    for vector in MESSAGES[:4]
    for field in (
        "mls_welcome",
        "mls_group_info",
        "mls_key_package",
        "public_message_application",
        "public_message_proposal",
        "public_message_commit",
        "private_message",
    )
]


def _decode_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        MLSMessage.from_bytes(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    _decode_only_decode_error(data)
    _decode_only_decode_error(b"\x00\x01" + data)  # past the version, into the bodies
    for wire_format in range(1, 6):
        _decode_only_decode_error(b"\x00\x01\x00" + bytes([wire_format]) + data)
    with contextlib.suppress(DecodeError):
        decode_ratchet_tree(data)
    for content_type in ContentType:
        with contextlib.suppress(DecodeError):
            PrivateMessageContent.from_bytes(data, content_type)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(VALID_MESSAGES), st.data())
def test_truncated_and_mutated_messages_raise_only_decode_error(
    valid: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(valid) - 1))
    with pytest.raises(DecodeError):
        MLSMessage.from_bytes(valid[:cut])
    at = data.draw(st.integers(0, len(valid) - 1))
    value = data.draw(st.integers(0, 255))
    _decode_only_decode_error(valid[:at] + bytes([value]) + valid[at + 1 :])
    _decode_only_decode_error(valid + data.draw(st.binary(min_size=1, max_size=8)))


def test_every_valid_prefix_is_refused() -> None:
    """Exhaustive truncation of one message of each wire format."""
    for valid in VALID_MESSAGES[:7]:
        assert MLSMessage.from_bytes(valid).to_bytes() == valid
        for cut in range(len(valid)):
            with pytest.raises(DecodeError):
                MLSMessage.from_bytes(valid[:cut])
