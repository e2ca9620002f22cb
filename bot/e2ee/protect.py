"""Message protection (RFC 9420 §6): open and make PrivateMessages, check PublicMessages.

Orange Meets sends every Commit and every media frame as a ``PrivateMessage`` (decision
record §1), so this is the recorder's per-frame path: sender data, then the sender's
ratchet key, then the content, then the padding, then the signature, in the order of
RFC 9420 §6.3. Each step that fails raises ``ProtectionError`` naming the step, so the
caller can count drops by cause (a replay, a frame of another epoch, a forgery) without
a message ever containing key material.

The membership of the sender is checked through the caller's lookup *before* its ratchet
is touched; a lookup answers ``None`` for a blank or absent leaf.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Final, NamedTuple

from bot.e2ee.codec import DecodeError, Writer
from bot.e2ee.crypto import CryptoError, open_, seal, sign_with_label, verify_with_label
from bot.e2ee.messages import (
    AuthenticatedContent,
    ContentType,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    PaddingError,
    PrivateContentAAD,
    PrivateMessage,
    PrivateMessageContent,
    PublicMessage,
    Sender,
    SenderData,
    SenderDataAAD,
    SenderType,
    WireFormat,
)
from bot.e2ee.schedule import (
    REUSE_GUARD_LEN,
    HashRatchet,
    RatchetError,
    SecretTree,
    apply_reuse_guard,
    sender_data_key_nonce,
)

__all__ = [
    "STEP_CONTENT",
    "STEP_GENERATION",
    "STEP_MEMBERSHIP",
    "STEP_PADDING",
    "STEP_SENDER_DATA",
    "STEP_SIGNATURE",
    "STEP_WIRE_FORMAT",
    "STEP_WRONG_EPOCH",
    "STEP_WRONG_GROUP",
    "ProtectionError",
    "SignatureKeyLookup",
    "Unprotected",
    "encrypt_private_message",
    "protect_private",
    "sign_framed_content",
    "unprotect_private",
    "unprotect_public",
    "verify_framed_content",
]

STEP_WRONG_GROUP: Final = "wrong group"
STEP_WRONG_EPOCH: Final = "wrong epoch"
STEP_SENDER_DATA: Final = "sender data"
STEP_GENERATION: Final = "generation"
STEP_CONTENT: Final = "content"
STEP_PADDING: Final = "padding"
STEP_SIGNATURE: Final = "signature"
STEP_MEMBERSHIP: Final = "membership tag"
STEP_WIRE_FORMAT: Final = "wire format"

SIGNATURE_LABEL: Final = "FramedContentTBS"

SignatureKeyLookup = Callable[[int], bytes | None]
"""Leaf index -> that member's signature public key, or ``None`` if the leaf is blank."""


class ProtectionError(ValueError):
    """A message that must not be processed. ``step`` is one of the ``STEP_*`` names; the
    message says what was wrong and never carries key bytes."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step


class Unprotected(NamedTuple):
    """An opened PrivateMessage: its sender, the ratchet generation, what it authenticates."""

    leaf_index: int
    generation: int
    content: AuthenticatedContent


# --- signatures (§6.1) ------------------------------------------------------------------------


def sign_framed_content(
    content: FramedContent,
    wire_format: WireFormat,
    group_context: GroupContext,
    signature_private_key: bytes,
) -> bytes:
    """§6.1: SignWithLabel(., "FramedContentTBS", FramedContentTBS) by a member. A Commit's
    confirmation tag depends on this signature (§8.2), so it is a step of its own."""
    tbs = content.tbs(wire_format, group_context.to_bytes())
    return sign_with_label(signature_private_key, SIGNATURE_LABEL, tbs)


def verify_framed_content(
    authenticated: AuthenticatedContent,
    group_context: GroupContext,
    signature_key: bytes,
) -> None:
    """§6.1: the sender's signature over FramedContentTBS, bound to this GroupContext (so a
    message cannot be replayed into another group or epoch). ``ProtectionError`` if not."""
    content = authenticated.content
    if content.sender.sender_type not in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT):
        raise ProtectionError(STEP_SIGNATURE, f"unsupported sender {content.sender.sender_type}")
    tbs = content.tbs(authenticated.wire_format, group_context.to_bytes())
    if not verify_with_label(signature_key, SIGNATURE_LABEL, tbs, authenticated.auth.signature):
        raise ProtectionError(STEP_SIGNATURE, "FramedContent signature does not verify")


def _check_group(group_id: bytes, epoch: int, group_context: GroupContext) -> None:
    """§6.3.2 / §12.4.2: a message of another group or epoch is not ours to open."""
    if group_id != group_context.group_id:
        raise ProtectionError(STEP_WRONG_GROUP, "message is for another group")
    if epoch != group_context.epoch:
        raise ProtectionError(
            STEP_WRONG_EPOCH, f"message epoch {epoch}, group epoch {group_context.epoch}"
        )


def _ratchet(tree: SecretTree, content_type: ContentType, leaf_index: int) -> HashRatchet:
    """§9: handshake keys for proposals and commits, application keys for the rest."""
    if content_type is ContentType.APPLICATION:
        return tree.application(leaf_index)
    return tree.handshake(leaf_index)


# --- opening a PrivateMessage (§6.3) ----------------------------------------------------------


def _open_sender_data(message: PrivateMessage, sender_data_secret: bytes) -> SenderData:
    """§6.3.2: key and nonce come from the first KDF.Nh bytes of the content ciphertext."""
    key, nonce = sender_data_key_nonce(sender_data_secret, message.ciphertext)
    aad = SenderDataAAD(message.group_id, message.epoch, message.content_type).to_bytes()
    try:
        plaintext = open_(key, nonce, aad, message.encrypted_sender_data)
    except CryptoError:
        raise ProtectionError(STEP_SENDER_DATA, "decryption failed") from None
    try:
        return SenderData.from_bytes(plaintext)
    except DecodeError:
        raise ProtectionError(STEP_SENDER_DATA, "malformed SenderData") from None


def _content_key_nonce(
    tree: SecretTree, content_type: ContentType, sender: SenderData
) -> tuple[bytes, bytes]:
    """§6.3.1: the sender's ratchet key and nonce for the generation (the caller XORs the
    reuse guard in). Replays and generations outside the ratchet's window fail here."""
    try:
        ratchet = _ratchet(tree, content_type, sender.leaf_index)
    except ValueError:
        raise ProtectionError(
            STEP_SENDER_DATA, f"leaf {sender.leaf_index} is outside the tree"
        ) from None
    try:
        return ratchet.key_nonce(sender.generation)
    except RatchetError as error:
        raise ProtectionError(STEP_GENERATION, str(error)) from None


def _open_content(message: PrivateMessage, key: bytes, nonce: bytes) -> PrivateMessageContent:
    """§6.3.1: decrypt under PrivateContentAAD; the padding must be all zero bytes."""
    aad = PrivateContentAAD(
        message.group_id, message.epoch, message.content_type, message.authenticated_data
    ).to_bytes()
    try:
        plaintext = open_(key, nonce, aad, message.ciphertext)
    except CryptoError:
        raise ProtectionError(STEP_CONTENT, "decryption failed") from None
    try:
        return PrivateMessageContent.from_bytes(plaintext, message.content_type)
    except PaddingError:
        raise ProtectionError(STEP_PADDING, "padding has non-zero bytes") from None
    except DecodeError as error:
        raise ProtectionError(STEP_CONTENT, f"malformed content ({error})") from None


def unprotect_private(
    message: PrivateMessage,
    *,
    group_context: GroupContext,
    sender_data_secret: bytes,
    secret_tree: SecretTree,
    signature_key: SignatureKeyLookup,
) -> Unprotected:
    """Open a PrivateMessage of the current epoch (RFC 9420 §6.3) and verify its signature.

    Order: group and epoch, sender data, sender membership (``signature_key`` returns
    ``None`` for a blank leaf), the ratchet key for the generation (consumed: a replay then
    fails with step ``generation``), the content and padding, the signature (§6.1).
    """
    _check_group(message.group_id, message.epoch, group_context)
    sender = _open_sender_data(message, sender_data_secret)
    public_key = signature_key(sender.leaf_index)
    if public_key is None:
        raise ProtectionError(STEP_SENDER_DATA, f"leaf {sender.leaf_index} is not a member")
    key, nonce = _content_key_nonce(secret_tree, message.content_type, sender)
    ratchet = _ratchet(secret_tree, message.content_type, sender.leaf_index)
    try:
        plain = _open_content(message, key, apply_reuse_guard(nonce, sender.reuse_guard))
        framed = FramedContent(
            message.group_id,
            message.epoch,
            Sender.member(sender.leaf_index),
            message.authenticated_data,
            message.content_type,
            plain.content,
        )
        authenticated = AuthenticatedContent(WireFormat.PRIVATE_MESSAGE, framed, plain.auth)
        verify_framed_content(authenticated, group_context, public_key)
    except ProtectionError:
        ratchet.give_back(sender.generation, key, nonce)  # the genuine copy may still come
        raise
    return Unprotected(sender.leaf_index, sender.generation, authenticated)


# --- making a PrivateMessage (§6.3) -----------------------------------------------------------


def encrypt_private_message(
    authenticated: AuthenticatedContent,
    *,
    sender_data_secret: bytes,
    secret_tree: SecretTree,
    padding: int = 0,
    reuse_guard: bytes | None = None,
) -> PrivateMessage:
    """§6.3: encrypt an already signed (and, for a Commit, confirmed) content with the
    sender's next ratchet generation, then the sender data. Orange uses no padding."""
    content = authenticated.content
    if authenticated.wire_format is not WireFormat.PRIVATE_MESSAGE:
        raise ValueError("a PrivateMessage must carry content signed as mls_private_message")
    if content.sender.sender_type is not SenderType.MEMBER or content.sender.index is None:
        raise ValueError("only a member can send a PrivateMessage")
    leaf_index = content.sender.index
    guard = os.urandom(REUSE_GUARD_LEN) if reuse_guard is None else reuse_guard
    generation, key, nonce = _ratchet(secret_tree, content.content_type, leaf_index).next()
    plaintext = PrivateMessageContent(content.content, authenticated.auth, padding).to_bytes()
    aad = PrivateContentAAD(
        content.group_id, content.epoch, content.content_type, content.authenticated_data
    ).to_bytes()
    ciphertext = seal(key, apply_reuse_guard(nonce, guard), aad, plaintext)
    sender_data = SenderData(leaf_index, generation, guard).to_bytes()
    sd_key, sd_nonce = sender_data_key_nonce(sender_data_secret, ciphertext)
    sd_aad = SenderDataAAD(content.group_id, content.epoch, content.content_type).to_bytes()
    return PrivateMessage(
        content.group_id,
        content.epoch,
        content.content_type,
        content.authenticated_data,
        seal(sd_key, sd_nonce, sd_aad, sender_data),
        ciphertext,
    )


def protect_private(
    content: FramedContent,
    *,
    group_context: GroupContext,
    sender_data_secret: bytes,
    secret_tree: SecretTree,
    signature_private_key: bytes,
    padding: int = 0,
) -> PrivateMessage:
    """Sign and encrypt an application message or a proposal (§6.1, §6.3). A Commit needs
    its confirmation tag between the two steps: use ``sign_framed_content``, then
    ``encrypt_private_message``."""
    if content.content_type is ContentType.COMMIT:
        raise ValueError("a Commit needs its confirmation tag: sign, confirm, then encrypt")
    if (content.group_id, content.epoch) != (group_context.group_id, group_context.epoch):
        raise ValueError("content is not for this group context's group and epoch")
    wire_format = WireFormat.PRIVATE_MESSAGE
    signature = sign_framed_content(content, wire_format, group_context, signature_private_key)
    authenticated = AuthenticatedContent(wire_format, content, FramedContentAuthData(signature))
    return encrypt_private_message(
        authenticated,
        sender_data_secret=sender_data_secret,
        secret_tree=secret_tree,
        padding=padding,
    )


# --- PublicMessage (§6.2) ---------------------------------------------------------------------


def _membership_tag(
    message: PublicMessage, group_context: GroupContext, membership_key: bytes
) -> bytes:
    """§6.2: MAC(membership_key, AuthenticatedContentTBM = FramedContentTBS || auth)."""
    tbs = message.content.tbs(WireFormat.PUBLIC_MESSAGE, group_context.to_bytes())
    w = Writer().raw(tbs)
    message.auth.encode(w)
    return hmac.new(membership_key, bytes(w), "sha256").digest()


def unprotect_public(
    message: PublicMessage,
    *,
    group_context: GroupContext,
    membership_key: bytes,
    signature_key: SignatureKeyLookup,
) -> AuthenticatedContent:
    """Check a member's PublicMessage (§6.2): group and epoch, not application data (which
    "MUST" be a PrivateMessage), the membership tag, then the signature. Orange never sends
    one; other implementations and the passive-client vectors do."""
    content = message.content
    _check_group(content.group_id, content.epoch, group_context)
    if content.content_type is ContentType.APPLICATION:
        raise ProtectionError(STEP_WIRE_FORMAT, "application data in a PublicMessage")
    if content.sender.sender_type is not SenderType.MEMBER or content.sender.index is None:
        raise ProtectionError(STEP_SENDER_DATA, "only member PublicMessages are supported")
    public_key = signature_key(content.sender.index)
    if public_key is None:
        raise ProtectionError(STEP_SENDER_DATA, f"leaf {content.sender.index} is not a member")
    expected = _membership_tag(message, group_context, membership_key)
    if not hmac.compare_digest(expected, message.membership_tag or b""):
        raise ProtectionError(STEP_MEMBERSHIP, "membership tag does not verify")
    authenticated = AuthenticatedContent(WireFormat.PUBLIC_MESSAGE, content, message.auth)
    verify_framed_content(authenticated, group_context, public_key)
    return authenticated
