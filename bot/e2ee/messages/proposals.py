"""What a Commit carries (RFC 9420 §7.6, §8.4, §12.1, §12.4).

The UpdatePath and its HPKE ciphertexts, pre-shared key ids, every proposal RFC 9420
defines, ``ProposalOrRef`` and ``Commit``; and ``Content``, the application data, Proposal
or Commit that a FramedContent or PrivateMessageContent holds (§6), with its codec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self, TypeAlias

from bot.e2ee.codec import Reader, Writer
from bot.e2ee.messages.base import Struct, put
from bot.e2ee.messages.enums import (
    ContentType,
    ProposalOrRefType,
    ProposalType,
    ProtocolVersion,
    PSKType,
    ResumptionPSKUsage,
    closed,
)
from bot.e2ee.messages.leaf import Extension, KeyPackage, LeafNode, get_extensions, put_extensions

# --- UpdatePath (§7.6) ---------------------------------------------------------------------


@dataclass(frozen=True)
class HPKECiphertext(Struct):
    """§7.6: the output of an HPKE seal (``kem_output`` = the encapsulated key)."""

    kem_output: bytes
    ciphertext: bytes

    def encode(self, w: Writer) -> None:
        w.opaque(self.kem_output).opaque(self.ciphertext)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), r.opaque())


@dataclass(frozen=True)
class UpdatePathNode(Struct):
    """§7.6: a new public key on the committer's filtered direct path, and its path secret
    encrypted to each node of the copath child's resolution."""

    encryption_key: bytes
    encrypted_path_secret: tuple[HPKECiphertext, ...]

    def encode(self, w: Writer) -> None:
        w.opaque(self.encryption_key).vector(self.encrypted_path_secret, put)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), tuple(r.vector(HPKECiphertext.decode)))


@dataclass(frozen=True)
class UpdatePath(Struct):
    """§7.6: the committer's new leaf and one UpdatePathNode per filtered direct path node."""

    leaf_node: LeafNode
    nodes: tuple[UpdatePathNode, ...]

    def encode(self, w: Writer) -> None:
        self.leaf_node.encode(w)
        w.vector(self.nodes, put)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(LeafNode.decode(r), tuple(r.vector(UpdatePathNode.decode)))


# --- pre-shared keys (§8.4) -----------------------------------------------------------------


@dataclass(frozen=True)
class PreSharedKeyID(Struct):
    """§8.4: names a PSK; ``psk_id`` for external ones, ``usage``/``psk_group_id``/
    ``psk_epoch`` for resumption ones."""

    psktype: PSKType
    psk_nonce: bytes
    psk_id: bytes = b""
    usage: ResumptionPSKUsage | None = None
    psk_group_id: bytes = b""
    psk_epoch: int = 0

    def __post_init__(self) -> None:
        if (self.usage is None) != (self.psktype is PSKType.EXTERNAL):
            raise ValueError("PreSharedKeyID: usage is required for, and only for, resumption")

    def encode(self, w: Writer) -> None:
        w.u8(self.psktype)
        if self.usage is None:
            w.opaque(self.psk_id)
        else:
            w.u8(self.usage).opaque(self.psk_group_id).u64(self.psk_epoch)
        w.opaque(self.psk_nonce)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        kind = closed(PSKType, r.u8())
        if kind is PSKType.EXTERNAL:
            psk_id = r.opaque()
            return cls(kind, r.opaque(), psk_id=psk_id)
        usage = closed(ResumptionPSKUsage, r.u8())
        group_id = r.opaque()
        epoch = r.u64()
        return cls(kind, r.opaque(), usage=usage, psk_group_id=group_id, psk_epoch=epoch)


# --- proposals (§12.1) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Add(Struct):
    """§12.1.1: add the owner of a KeyPackage."""

    TYPE: ClassVar[ProposalType] = ProposalType.ADD
    key_package: KeyPackage

    def encode(self, w: Writer) -> None:
        self.key_package.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(KeyPackage.decode(r))


@dataclass(frozen=True)
class Update(Struct):
    """§12.1.2: the sender replaces its own leaf."""

    TYPE: ClassVar[ProposalType] = ProposalType.UPDATE
    leaf_node: LeafNode

    def encode(self, w: Writer) -> None:
        self.leaf_node.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(LeafNode.decode(r))


@dataclass(frozen=True)
class Remove(Struct):
    """§12.1.3: remove the member at leaf index ``removed``."""

    TYPE: ClassVar[ProposalType] = ProposalType.REMOVE
    removed: int

    def encode(self, w: Writer) -> None:
        w.u32(self.removed)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.u32())


@dataclass(frozen=True)
class PreSharedKey(Struct):
    """§12.1.4: inject a PSK into the next epoch."""

    TYPE: ClassVar[ProposalType] = ProposalType.PSK
    psk: PreSharedKeyID

    def encode(self, w: Writer) -> None:
        self.psk.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(PreSharedKeyID.decode(r))


@dataclass(frozen=True)
class ReInit(Struct):
    """§12.1.5: close this group in favour of a new one with other parameters."""

    TYPE: ClassVar[ProposalType] = ProposalType.REINIT
    group_id: bytes
    version: ProtocolVersion
    cipher_suite: int
    extensions: tuple[Extension, ...] = ()

    def encode(self, w: Writer) -> None:
        w.opaque(self.group_id).u16(self.version).u16(self.cipher_suite)
        put_extensions(w, self.extensions)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        group_id = r.opaque()
        version = closed(ProtocolVersion, r.u16())
        return cls(group_id, version, r.u16(), get_extensions(r))


@dataclass(frozen=True)
class ExternalInit(Struct):
    """§12.1.6: the KEM output an external joiner derives its init secret from."""

    TYPE: ClassVar[ProposalType] = ProposalType.EXTERNAL_INIT
    kem_output: bytes

    def encode(self, w: Writer) -> None:
        w.opaque(self.kem_output)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque())


@dataclass(frozen=True)
class GroupContextExtensions(Struct):
    """§12.1.7: replace the group's GroupContext extensions."""

    TYPE: ClassVar[ProposalType] = ProposalType.GROUP_CONTEXT_EXTENSIONS
    extensions: tuple[Extension, ...]

    def encode(self, w: Writer) -> None:
        put_extensions(w, self.extensions)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(get_extensions(r))


ProposalBody: TypeAlias = (
    Add | Update | Remove | PreSharedKey | ReInit | ExternalInit | GroupContextExtensions
)

_PROPOSAL_BODIES: dict[ProposalType, type[ProposalBody]] = {
    body.TYPE: body
    for body in (Add, Update, Remove, PreSharedKey, ReInit, ExternalInit, GroupContextExtensions)
}


@dataclass(frozen=True)
class Proposal(Struct):
    """§12.1 ``Proposal``: the proposal_type tag, then the body. The tag follows from the
    body's class, so the two cannot disagree."""

    body: ProposalBody

    @property
    def proposal_type(self) -> ProposalType:
        return self.body.TYPE

    def encode(self, w: Writer) -> None:
        w.u16(self.body.TYPE)
        self.body.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        kind = closed(ProposalType, r.u16())
        return cls(_PROPOSAL_BODIES[kind].decode(r))


@dataclass(frozen=True)
class ProposalOrRef(Struct):
    """§12.4: a proposal inline, or its ProposalRef (§5.2, ``RefHash("MLS 1.0 Proposal
    Reference", AuthenticatedContent)``) when it was sent before the Commit."""

    value: Proposal | bytes

    @property
    def type(self) -> ProposalOrRefType:
        if isinstance(self.value, Proposal):
            return ProposalOrRefType.PROPOSAL
        return ProposalOrRefType.REFERENCE

    def encode(self, w: Writer) -> None:
        w.u8(self.type)
        if isinstance(self.value, Proposal):
            self.value.encode(w)
        else:
            w.opaque(self.value)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        if closed(ProposalOrRefType, r.u8()) is ProposalOrRefType.PROPOSAL:
            return cls(Proposal.decode(r))
        return cls(r.opaque())


@dataclass(frozen=True)
class Commit(Struct):
    """§12.4: the proposals a Commit applies and, usually, the committer's UpdatePath
    (openmls's Add commits carry one, decision record §1)."""

    proposals: tuple[ProposalOrRef, ...]
    path: UpdatePath | None = None

    def encode(self, w: Writer) -> None:
        w.vector(self.proposals, put).optional(self.path, put)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(tuple(r.vector(ProposalOrRef.decode)), r.optional(UpdatePath.decode))


# --- content (§6): what a FramedContent or PrivateMessageContent holds -----------------

ApplicationData: TypeAlias = bytes
Content: TypeAlias = ApplicationData | Proposal | Commit

_CONTENT_CLASS: dict[ContentType, type] = {
    ContentType.APPLICATION: bytes,
    ContentType.PROPOSAL: Proposal,
    ContentType.COMMIT: Commit,
}


def check_content(content_type: ContentType, content: Content, what: str) -> None:
    if not isinstance(content, _CONTENT_CLASS[content_type]):
        raise ValueError(f"{what}: content does not match content_type {content_type.name}")


def put_content(w: Writer, content: Content) -> None:
    """The ``select (content_type)`` body shared by FramedContent and PrivateMessageContent."""
    if isinstance(content, bytes):
        w.opaque(content)
    else:
        content.encode(w)


def get_content(r: Reader, content_type: ContentType) -> Content:
    if content_type is ContentType.APPLICATION:
        return r.opaque()
    if content_type is ContentType.PROPOSAL:
        return Proposal.decode(r)
    return Commit.decode(r)
