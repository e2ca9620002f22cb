"""How messages travel (RFC 9420 §6): senders, framed and authenticated content, the
transcript hash inputs (§8.2), PublicMessage, PrivateMessage with its plaintext and sender
data (§6.3), and the ``MLSMessage`` envelope around every message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self, TypeAlias

from bot.e2ee.codec import DecodeError, Reader, Writer
from bot.e2ee.messages.base import Struct
from bot.e2ee.messages.enums import ContentType, ProtocolVersion, SenderType, WireFormat, closed
from bot.e2ee.messages.leaf import KeyPackage
from bot.e2ee.messages.proposals import Content, check_content, get_content, put_content
from bot.e2ee.messages.welcome import GroupInfo, Welcome


@dataclass(frozen=True)
class Sender(Struct):
    """§6: ``index`` is the leaf index of a member or the sender_index of an external
    sender, ``None`` for new members."""

    sender_type: SenderType
    index: int | None = None

    def __post_init__(self) -> None:
        indexed = self.sender_type in (SenderType.MEMBER, SenderType.EXTERNAL)
        if indexed != (self.index is not None):
            raise ValueError("Sender: an index is required for, and only for, member/external")

    @classmethod
    def member(cls, leaf_index: int) -> Sender:
        return cls(SenderType.MEMBER, leaf_index)

    def encode(self, w: Writer) -> None:
        w.u8(self.sender_type)
        if self.index is not None:
            w.u32(self.index)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        kind = closed(SenderType, r.u8())
        if kind in (SenderType.MEMBER, SenderType.EXTERNAL):
            return cls(kind, r.u32())
        return cls(kind)


@dataclass(frozen=True)
class FramedContent(Struct):
    """§6: the authenticated content of a handshake or application message; ``content`` is
    the application data (bytes), a Proposal or a Commit, as ``content_type`` says."""

    group_id: bytes
    epoch: int
    sender: Sender
    authenticated_data: bytes
    content_type: ContentType
    content: Content

    def __post_init__(self) -> None:
        check_content(self.content_type, self.content, "FramedContent")

    def encode(self, w: Writer) -> None:
        w.opaque(self.group_id).u64(self.epoch)
        self.sender.encode(w)
        w.opaque(self.authenticated_data).u8(self.content_type)
        put_content(w, self.content)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        group_id = r.opaque()
        epoch = r.u64()
        sender = Sender.decode(r)
        authenticated_data = r.opaque()
        content_type = closed(ContentType, r.u8())
        content = get_content(r, content_type)
        return cls(group_id, epoch, sender, authenticated_data, content_type, content)

    def tbs(self, wire_format: WireFormat, group_context: bytes | None) -> bytes:
        """§6.1 FramedContentTBS, signed with label "FramedContentTBS". Member and
        new-member-commit senders bind the serialized GroupContext (so a signature is only
        valid in this group and epoch); other senders must not pass one."""
        bound = self.sender.sender_type in (SenderType.MEMBER, SenderType.NEW_MEMBER_COMMIT)
        if bound != (group_context is not None):
            raise ValueError("FramedContentTBS: group context needed for, and only for, members")
        w = Writer().u16(ProtocolVersion.MLS10).u16(wire_format)
        self.encode(w)
        if group_context is not None:
            w.raw(group_context)
        return bytes(w)


@dataclass(frozen=True)
class FramedContentAuthData:
    """§6.1: the sender's signature and, for a Commit only, the confirmation tag. Its
    shape depends on the content type, so ``decode`` takes it."""

    signature: bytes
    confirmation_tag: bytes | None = None

    def encode(self, w: Writer) -> None:
        w.opaque(self.signature)
        if self.confirmation_tag is not None:
            w.opaque(self.confirmation_tag)

    @classmethod
    def decode(cls, r: Reader, content_type: ContentType) -> Self:
        signature = r.opaque()
        tag = r.opaque() if content_type is ContentType.COMMIT else None
        return cls(signature, tag)

    def check(self, content_type: ContentType) -> None:
        if (self.confirmation_tag is not None) != (content_type is ContentType.COMMIT):
            raise ValueError("FramedContentAuthData: confirmation_tag for, and only for, commits")


@dataclass(frozen=True)
class AuthenticatedContent(Struct):
    """§6.1: what a member processes once framing is removed, whatever the wire format.
    Its encoding is the input of a ProposalRef (§5.2)."""

    wire_format: WireFormat
    content: FramedContent
    auth: FramedContentAuthData

    def __post_init__(self) -> None:
        self.auth.check(self.content.content_type)

    def encode(self, w: Writer) -> None:
        w.u16(self.wire_format)
        self.content.encode(w)
        self.auth.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        wire_format = closed(WireFormat, r.u16())
        content = FramedContent.decode(r)
        return cls(wire_format, content, FramedContentAuthData.decode(r, content.content_type))

    def confirmed_transcript_hash_input(self) -> bytes:
        """§8.2 ConfirmedTranscriptHashInput of this Commit."""
        return ConfirmedTranscriptHashInput(
            self.wire_format, self.content, self.auth.signature
        ).to_bytes()


@dataclass(frozen=True)
class ConfirmedTranscriptHashInput(Struct):
    """§8.2: wire_format, the Commit's FramedContent and its signature (not the tag)."""

    wire_format: WireFormat
    content: FramedContent
    signature: bytes

    def encode(self, w: Writer) -> None:
        if self.content.content_type is not ContentType.COMMIT:
            raise ValueError("ConfirmedTranscriptHashInput: content must be a commit")
        w.u16(self.wire_format)
        self.content.encode(w)
        w.opaque(self.signature)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        wire_format = closed(WireFormat, r.u16())
        content = FramedContent.decode(r)
        if content.content_type is not ContentType.COMMIT:
            raise DecodeError("ConfirmedTranscriptHashInput: content is not a commit")
        return cls(wire_format, content, r.opaque())


@dataclass(frozen=True)
class InterimTranscriptHashInput(Struct):
    """§8.2: the confirmation tag, chained into the next epoch's transcript."""

    confirmation_tag: bytes

    def encode(self, w: Writer) -> None:
        w.opaque(self.confirmation_tag)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque())


@dataclass(frozen=True)
class PublicMessage(Struct):
    """§6.2: a signed, unencrypted message; members add a membership_tag (a MAC under the
    epoch's membership_key). Orange never sends one (pure-ciphertext policy) but the
    vectors and other implementations do."""

    content: FramedContent
    auth: FramedContentAuthData
    membership_tag: bytes | None = None

    def __post_init__(self) -> None:
        self.auth.check(self.content.content_type)
        member = self.content.sender.sender_type is SenderType.MEMBER
        if member != (self.membership_tag is not None):
            raise ValueError("PublicMessage: membership_tag for, and only for, members")

    def encode(self, w: Writer) -> None:
        self.content.encode(w)
        self.auth.encode(w)
        if self.membership_tag is not None:
            w.opaque(self.membership_tag)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        content = FramedContent.decode(r)
        auth = FramedContentAuthData.decode(r, content.content_type)
        member = content.sender.sender_type is SenderType.MEMBER
        return cls(content, auth, r.opaque() if member else None)


@dataclass(frozen=True)
class PrivateMessage(Struct):
    """§6.3: an encrypted message (Orange's Commits and every media frame)."""

    group_id: bytes
    epoch: int
    content_type: ContentType
    authenticated_data: bytes
    encrypted_sender_data: bytes
    ciphertext: bytes

    def encode(self, w: Writer) -> None:
        w.opaque(self.group_id).u64(self.epoch).u8(self.content_type)
        w.opaque(self.authenticated_data).opaque(self.encrypted_sender_data)
        w.opaque(self.ciphertext)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        group_id = r.opaque()
        epoch = r.u64()
        content_type = closed(ContentType, r.u8())
        authenticated_data = r.opaque()
        return cls(group_id, epoch, content_type, authenticated_data, r.opaque(), r.opaque())


class PaddingError(DecodeError):
    """§6.3.1: a PrivateMessageContent whose padding is not all zero bytes."""


@dataclass(frozen=True)
class PrivateMessageContent:
    """§6.3.1: the plaintext of a PrivateMessage. Its shape follows the outer
    content_type, and the padding runs to the end, so it decodes whole bytes only."""

    content: Content
    auth: FramedContentAuthData
    padding: int = 0

    def to_bytes(self) -> bytes:
        w = Writer()
        put_content(w, self.content)
        self.auth.encode(w)
        w.raw(bytes(self.padding))
        return bytes(w)

    @classmethod
    def from_bytes(cls, data: bytes, content_type: ContentType) -> Self:
        """Decode a plaintext; any non-zero padding byte raises ``PaddingError`` ("MUST be
        rejected", §6.3.1: padding is not authenticated separately)."""
        r = Reader(data, "PrivateMessageContent")
        content = get_content(r, content_type)
        auth = FramedContentAuthData.decode(r, content_type)
        padding = r.raw(r.remaining)
        if padding.count(0) != len(padding):
            raise PaddingError("PrivateMessageContent: padding has non-zero bytes")
        return cls(content, auth, len(padding))


@dataclass(frozen=True)
class SenderData(Struct):
    """§6.3.2: who sent a PrivateMessage and with which ratchet generation; the
    ``reuse_guard`` (4 bytes) is XORed into the content nonce."""

    leaf_index: int
    generation: int
    reuse_guard: bytes

    def __post_init__(self) -> None:
        if len(self.reuse_guard) != 4:
            raise ValueError("SenderData: reuse_guard must be 4 bytes")

    def encode(self, w: Writer) -> None:
        w.u32(self.leaf_index).u32(self.generation).raw(self.reuse_guard)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.u32(), r.u32(), r.raw(4))


@dataclass(frozen=True)
class SenderDataAAD(Struct):
    """§6.3.2: the associated data of the sender-data encryption."""

    group_id: bytes
    epoch: int
    content_type: ContentType

    def encode(self, w: Writer) -> None:
        w.opaque(self.group_id).u64(self.epoch).u8(self.content_type)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), r.u64(), closed(ContentType, r.u8()))


@dataclass(frozen=True)
class PrivateContentAAD(Struct):
    """§6.3.1: the associated data of the content encryption."""

    group_id: bytes
    epoch: int
    content_type: ContentType
    authenticated_data: bytes

    def encode(self, w: Writer) -> None:
        w.opaque(self.group_id).u64(self.epoch).u8(self.content_type)
        w.opaque(self.authenticated_data)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), r.u64(), closed(ContentType, r.u8()), r.opaque())


# --- MLSMessage (§6) ----------------------------------------------------------------------

MLSBody: TypeAlias = PublicMessage | PrivateMessage | Welcome | GroupInfo | KeyPackage

_MLS_BODIES: dict[WireFormat, type[MLSBody]] = {
    WireFormat.PUBLIC_MESSAGE: PublicMessage,
    WireFormat.PRIVATE_MESSAGE: PrivateMessage,
    WireFormat.WELCOME: Welcome,
    WireFormat.GROUP_INFO: GroupInfo,
    WireFormat.KEY_PACKAGE: KeyPackage,
}


@dataclass(frozen=True)
class MLSMessage(Struct):
    """§6: the envelope: version 1, the wire format, the body. The wire format follows
    from the body's class."""

    body: MLSBody

    @property
    def wire_format(self) -> WireFormat:
        for wire_format, kind in _MLS_BODIES.items():
            if isinstance(self.body, kind):
                return wire_format
        raise TypeError(f"MLSMessage: {type(self.body).__name__} is not a message body")

    def encode(self, w: Writer) -> None:
        w.u16(ProtocolVersion.MLS10).u16(self.wire_format)
        self.body.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        closed(ProtocolVersion, r.u16())
        wire_format = closed(WireFormat, r.u16())
        return cls(_MLS_BODIES[wire_format].decode(r))
