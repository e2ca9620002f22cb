"""The RFC 9420 structures the recorder reads or writes, with their exact wire encoding.

Every structure is a frozen dataclass with ``encode(w)`` / ``decode(r)`` over the TLS
presentation codec (RFC 9420 §2.1, ``bot.e2ee.codec``) and ``to_bytes`` / ``from_bytes``
(the latter refusing trailing bytes). Signatures, MACs and tree hashes are computed over
these encodings, so a structure must re-encode to exactly the bytes it was read from: the
classes keep every field on the wire, including unknown extensions (as opaque
``Extension``) and the lists of ``Capabilities`` (which carry GREASE values, §13.5).

Decoding is strict where RFC 9420 gives a closed ``select``: an unknown wire format,
content type, sender type, proposal type, credential type, leaf node source, node type or
PSK type cannot be parsed past, so it raises ``DecodeError``; so does ``reserved(0)``.
Input comes from other people's machines: a malformed message must fail with
``DecodeError`` (a ``ValueError``), never with another exception.

Orange Meets' profile (docs/e2ee-mls-choice.md §1) uses bare ``KeyPackage`` bytes, the ratchet
tree out of band (``encode_ratchet_tree`` / ``decode_ratchet_tree``) and ``PrivateMessage``
for both Commits and media frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar, Self, TypeAlias, TypeVar

from bot.e2ee.codec import DecodeError, Reader, Writer

__all__ = [
    "Add",
    "ApplicationData",
    "AuthenticatedContent",
    "Capabilities",
    "Commit",
    "ConfirmedTranscriptHashInput",
    "Content",
    "ContentType",
    "Credential",
    "CredentialType",
    "DecodeError",
    "EncryptedGroupSecrets",
    "Extension",
    "ExtensionType",
    "ExternalInit",
    "FramedContent",
    "FramedContentAuthData",
    "GroupContext",
    "GroupContextExtensions",
    "GroupInfo",
    "GroupSecrets",
    "HPKECiphertext",
    "InterimTranscriptHashInput",
    "KeyPackage",
    "LeafNode",
    "LeafNodeSource",
    "Lifetime",
    "MLSBody",
    "MLSMessage",
    "Node",
    "NodeType",
    "PSKType",
    "PaddingError",
    "ParentNode",
    "PathSecret",
    "PreSharedKey",
    "PreSharedKeyID",
    "PrivateContentAAD",
    "PrivateMessage",
    "PrivateMessageContent",
    "Proposal",
    "ProposalBody",
    "ProposalOrRef",
    "ProposalOrRefType",
    "ProposalType",
    "ProtocolVersion",
    "PublicMessage",
    "ReInit",
    "Remove",
    "ResumptionPSKUsage",
    "Sender",
    "SenderData",
    "SenderDataAAD",
    "SenderType",
    "Update",
    "UpdatePath",
    "UpdatePathNode",
    "Welcome",
    "WireFormat",
    "decode_ratchet_tree",
    "encode_ratchet_tree",
]

CIPHER_SUITE_1 = 0x0001  # MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, the only one we run


# --- enums (RFC 9420 §6, §5.3, §7.2, §12.1, §13) ------------------------------------------


class ProtocolVersion(IntEnum):
    """§6: only MLS 1.0 exists; ``reserved(0)`` and anything newer are refused."""

    MLS10 = 1


class ContentType(IntEnum):
    """§6: what a FramedContent / PrivateMessage carries."""

    APPLICATION = 1
    PROPOSAL = 2
    COMMIT = 3


class SenderType(IntEnum):
    """§6: who sent a FramedContent."""

    MEMBER = 1
    EXTERNAL = 2
    NEW_MEMBER_PROPOSAL = 3
    NEW_MEMBER_COMMIT = 4


class WireFormat(IntEnum):
    """§6: the MLSMessage variants (uint16)."""

    PUBLIC_MESSAGE = 1
    PRIVATE_MESSAGE = 2
    WELCOME = 3
    GROUP_INFO = 4
    KEY_PACKAGE = 5


class ProposalType(IntEnum):
    """§12.1 / §17.4: the proposals RFC 9420 defines (uint16)."""

    ADD = 1
    UPDATE = 2
    REMOVE = 3
    PSK = 4
    REINIT = 5
    EXTERNAL_INIT = 6
    GROUP_CONTEXT_EXTENSIONS = 7


class ExtensionType(IntEnum):
    """§17.3: known extension types. Others stay opaque ``Extension`` values."""

    APPLICATION_ID = 1
    RATCHET_TREE = 2
    REQUIRED_CAPABILITIES = 3
    EXTERNAL_PUB = 4
    EXTERNAL_SENDERS = 5


class CredentialType(IntEnum):
    """§5.3 / §17.5: only basic and X.509 have a wire format we can parse."""

    BASIC = 1
    X509 = 2


class LeafNodeSource(IntEnum):
    """§7.2: why a LeafNode was made; it decides what its signature covers."""

    KEY_PACKAGE = 1
    UPDATE = 2
    COMMIT = 3


class NodeType(IntEnum):
    """§7.8 / §12.4.3.3: the tag of a ratchet tree node."""

    LEAF = 1
    PARENT = 2


class ProposalOrRefType(IntEnum):
    """§12.4: a proposal inline, or by reference to one received before."""

    PROPOSAL = 1
    REFERENCE = 2


class PSKType(IntEnum):
    """§8.4: where a pre-shared key comes from."""

    EXTERNAL = 1
    RESUMPTION = 2


class ResumptionPSKUsage(IntEnum):
    """§8.6: why a resumption PSK is injected."""

    APPLICATION = 1
    REINIT = 2
    BRANCH = 3


_E = TypeVar("_E", bound=IntEnum)


def _enum(kind: type[_E], value: int) -> _E:
    """A closed enum value, or ``DecodeError``: RFC 9420 has no way to skip an unknown one."""
    try:
        return kind(value)
    except ValueError:
        raise DecodeError(f"{kind.__name__}: unknown or reserved value {value}") from None


# --- the encode/decode contract ------------------------------------------------------


class _Struct:
    """Base of every self-delimiting structure: ``to_bytes`` / ``from_bytes`` on top of
    ``encode`` / ``decode``."""

    def encode(self, w: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def decode(cls, r: Reader) -> Self:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        w = Writer()
        self.encode(w)
        return bytes(w)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode exactly ``data``: trailing bytes are an error (a forged suffix is not
        covered by anything else)."""
        r = Reader(data, cls.__name__)
        value = cls.decode(r)
        r.done()
        return value


def _put(w: Writer, item: _Struct) -> None:
    item.encode(w)


# --- credentials, capabilities, extensions (§5.3, §7.2, §13) ------------------------------


@dataclass(frozen=True)
class Extension(_Struct):
    """§13: ``extension_type`` + opaque data; unknown types are kept, never dropped, because
    they are covered by signatures and the tree hash."""

    extension_type: int
    extension_data: bytes

    def encode(self, w: Writer) -> None:
        w.u16(self.extension_type).opaque(self.extension_data)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.u16(), r.opaque())


def _put_extensions(w: Writer, extensions: tuple[Extension, ...]) -> None:
    w.vector(extensions, _put)


def _get_extensions(r: Reader) -> tuple[Extension, ...]:
    """§13.4: an extension list "MUST NOT contain more than one extension of any given
    type"; a duplicate would make the two sides disagree on which one applies."""
    extensions = tuple(r.vector(Extension.decode))
    types = [e.extension_type for e in extensions]
    if len(set(types)) != len(types):
        raise DecodeError("extensions: duplicate extension type")
    return extensions


@dataclass(frozen=True)
class Credential(_Struct):
    """§5.3: a basic credential (``identity``: Orange uses the room's websocket id) or an
    X.509 chain (``certificates``, each ``cert_data`` opaque)."""

    credential_type: CredentialType
    identity: bytes = b""
    certificates: tuple[bytes, ...] = ()

    @classmethod
    def basic(cls, identity: bytes) -> Credential:
        return cls(CredentialType.BASIC, identity=identity)

    def encode(self, w: Writer) -> None:
        w.u16(self.credential_type)
        if self.credential_type is CredentialType.BASIC:
            w.opaque(self.identity)
        else:
            w.vector(self.certificates, Writer.opaque)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        kind = _enum(CredentialType, r.u16())
        if kind is CredentialType.BASIC:
            return cls(kind, identity=r.opaque())
        return cls(kind, certificates=tuple(r.vector(Reader.opaque)))


@dataclass(frozen=True)
class Capabilities(_Struct):
    """§7.2: what a client supports. Plain integers, not enums: peers advertise GREASE
    values (§13.5) that must survive a re-encode."""

    versions: tuple[int, ...] = (ProtocolVersion.MLS10,)
    cipher_suites: tuple[int, ...] = (CIPHER_SUITE_1,)
    extensions: tuple[int, ...] = ()
    proposals: tuple[int, ...] = ()
    credentials: tuple[int, ...] = (CredentialType.BASIC,)

    def encode(self, w: Writer) -> None:
        for values in (
            self.versions,
            self.cipher_suites,
            self.extensions,
            self.proposals,
            self.credentials,
        ):
            w.vector(values, Writer.u16)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        lists = [tuple(r.vector(Reader.u16)) for _ in range(5)]
        return cls(*lists)


@dataclass(frozen=True)
class Lifetime(_Struct):
    """§7.2: validity of a KeyPackage's leaf, seconds since the epoch. openmls checks
    ``not_before < now < not_after`` and refuses long ranges (decision record §1)."""

    not_before: int
    not_after: int

    def encode(self, w: Writer) -> None:
        w.u64(self.not_before).u64(self.not_after)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.u64(), r.u64())


# --- leaves, key packages, the ratchet tree (§7.2, §10, §12.4.3.3) ------------------------


@dataclass(frozen=True)
class LeafNode(_Struct):
    """§7.2: a member's leaf. ``lifetime`` is present exactly for ``key_package`` leaves,
    ``parent_hash`` exactly for ``commit`` leaves."""

    encryption_key: bytes
    signature_key: bytes
    credential: Credential
    capabilities: Capabilities
    leaf_node_source: LeafNodeSource
    extensions: tuple[Extension, ...] = ()
    signature: bytes = b""
    lifetime: Lifetime | None = None
    parent_hash: bytes | None = None

    def __post_init__(self) -> None:
        source = self.leaf_node_source
        if (self.lifetime is not None) != (source is LeafNodeSource.KEY_PACKAGE):
            raise ValueError("LeafNode: lifetime is required for, and only for, key_package")
        if (self.parent_hash is not None) != (source is LeafNodeSource.COMMIT):
            raise ValueError("LeafNode: parent_hash is required for, and only for, commit")

    def _encode_content(self, w: Writer) -> None:
        w.opaque(self.encryption_key).opaque(self.signature_key)
        self.credential.encode(w)
        self.capabilities.encode(w)
        w.u8(self.leaf_node_source)
        if self.lifetime is not None:
            self.lifetime.encode(w)
        if self.parent_hash is not None:
            w.opaque(self.parent_hash)
        _put_extensions(w, self.extensions)

    def encode(self, w: Writer) -> None:
        self._encode_content(w)
        w.opaque(self.signature)

    def tbs(self, group_id: bytes | None, leaf_index: int | None) -> bytes:
        """§7.2 LeafNodeTBS, signed with label "LeafNodeTBS". An ``update`` or ``commit``
        leaf also binds the group and its position (so it cannot be replayed into another
        group or slot); a ``key_package`` leaf ignores both arguments."""
        w = Writer()
        self._encode_content(w)
        if self.leaf_node_source is not LeafNodeSource.KEY_PACKAGE:
            if group_id is None or leaf_index is None:
                raise ValueError("LeafNodeTBS: update/commit leaves need group_id and leaf_index")
            w.opaque(group_id).u32(leaf_index)
        return bytes(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        encryption_key = r.opaque()
        signature_key = r.opaque()
        credential = Credential.decode(r)
        capabilities = Capabilities.decode(r)
        source = _enum(LeafNodeSource, r.u8())
        lifetime = Lifetime.decode(r) if source is LeafNodeSource.KEY_PACKAGE else None
        parent_hash = r.opaque() if source is LeafNodeSource.COMMIT else None
        extensions = _get_extensions(r)
        signature = r.opaque()
        return cls(
            encryption_key,
            signature_key,
            credential,
            capabilities,
            source,
            extensions,
            signature,
            lifetime,
            parent_hash,
        )


@dataclass(frozen=True)
class KeyPackage(_Struct):
    """§10: what a joiner publishes. Orange sends and expects it bare, not in an MLSMessage
    (decision record §1)."""

    cipher_suite: int
    init_key: bytes
    leaf_node: LeafNode
    extensions: tuple[Extension, ...] = ()
    signature: bytes = b""
    version: ProtocolVersion = ProtocolVersion.MLS10

    def _encode_content(self, w: Writer) -> None:
        w.u16(self.version).u16(self.cipher_suite).opaque(self.init_key)
        self.leaf_node.encode(w)
        _put_extensions(w, self.extensions)

    def tbs(self) -> bytes:
        """§10 KeyPackageTBS, signed with label "KeyPackageTBS" by the leaf's key."""
        w = Writer()
        self._encode_content(w)
        return bytes(w)

    def encode(self, w: Writer) -> None:
        self._encode_content(w)
        w.opaque(self.signature)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        version = _enum(ProtocolVersion, r.u16())
        cipher_suite = r.u16()
        init_key = r.opaque()
        leaf_node = LeafNode.decode(r)
        extensions = _get_extensions(r)
        signature = r.opaque()
        return cls(cipher_suite, init_key, leaf_node, extensions, signature, version)


@dataclass(frozen=True)
class ParentNode(_Struct):
    """§7.1: an interior node of the ratchet tree."""

    encryption_key: bytes
    parent_hash: bytes
    unmerged_leaves: tuple[int, ...] = ()

    def encode(self, w: Writer) -> None:
        w.opaque(self.encryption_key).opaque(self.parent_hash)
        w.vector(self.unmerged_leaves, Writer.u32)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), r.opaque(), tuple(r.vector(Reader.u32)))


Node: TypeAlias = LeafNode | ParentNode


def _put_node(w: Writer, node: Node) -> None:
    """§7.8 ``Node``: the node_type tag, then the node."""
    w.u8(NodeType.LEAF if isinstance(node, LeafNode) else NodeType.PARENT)
    node.encode(w)


def _get_node(r: Reader) -> Node:
    if _enum(NodeType, r.u8()) is NodeType.LEAF:
        return LeafNode.decode(r)
    return ParentNode.decode(r)


def _put_optional_node(w: Writer, node: Node | None) -> None:
    """``optional<Node>``: a presence byte, then the node."""
    if node is None:
        w.u8(0)
    else:
        w.u8(1)
        _put_node(w, node)


def encode_ratchet_tree(nodes: list[Node | None]) -> bytes:
    """§12.4.3.3 ``optional<Node> ratchet_tree<V>``, as Orange sends it beside the Welcome.
    Trailing blank nodes are dropped: the sender "MUST NOT include" them."""
    trimmed = list(nodes)
    while trimmed and trimmed[-1] is None:
        trimmed.pop()
    return bytes(Writer().vector(trimmed, _put_optional_node))


def decode_ratchet_tree(data: bytes) -> list[Node | None]:
    """§12.4.3.3: decode an out-of-band ratchet tree. The receiver "MUST check that the last
    node is non-blank"; leaves sit at even and parents at odd indices (§4.1), so a node of
    the wrong kind for its position is refused here rather than confusing tree math later.
    The caller extends the list to 2^(d+1)-1 nodes."""
    r = Reader(data, "ratchet_tree")
    nodes = r.vector(lambda r: r.optional(_get_node))
    r.done()
    if not nodes or nodes[-1] is None:
        raise DecodeError("ratchet_tree: empty, or its last node is blank")
    for index, node in enumerate(nodes):
        if node is not None and isinstance(node, LeafNode) != (index % 2 == 0):
            raise DecodeError(f"ratchet_tree: node {index} has the wrong type for its position")
    return nodes


# --- UpdatePath (§7.6) ---------------------------------------------------------------------


@dataclass(frozen=True)
class HPKECiphertext(_Struct):
    """§7.6: the output of an HPKE seal (``kem_output`` = the encapsulated key)."""

    kem_output: bytes
    ciphertext: bytes

    def encode(self, w: Writer) -> None:
        w.opaque(self.kem_output).opaque(self.ciphertext)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), r.opaque())


@dataclass(frozen=True)
class UpdatePathNode(_Struct):
    """§7.6: a new public key on the committer's filtered direct path, and its path secret
    encrypted to each node of the copath child's resolution."""

    encryption_key: bytes
    encrypted_path_secret: tuple[HPKECiphertext, ...]

    def encode(self, w: Writer) -> None:
        w.opaque(self.encryption_key).vector(self.encrypted_path_secret, _put)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), tuple(r.vector(HPKECiphertext.decode)))


@dataclass(frozen=True)
class UpdatePath(_Struct):
    """§7.6: the committer's new leaf and one UpdatePathNode per filtered direct path node."""

    leaf_node: LeafNode
    nodes: tuple[UpdatePathNode, ...]

    def encode(self, w: Writer) -> None:
        self.leaf_node.encode(w)
        w.vector(self.nodes, _put)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(LeafNode.decode(r), tuple(r.vector(UpdatePathNode.decode)))


# --- pre-shared keys (§8.4) -----------------------------------------------------------------


@dataclass(frozen=True)
class PreSharedKeyID(_Struct):
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
        kind = _enum(PSKType, r.u8())
        if kind is PSKType.EXTERNAL:
            psk_id = r.opaque()
            return cls(kind, r.opaque(), psk_id=psk_id)
        usage = _enum(ResumptionPSKUsage, r.u8())
        group_id = r.opaque()
        epoch = r.u64()
        return cls(kind, r.opaque(), usage=usage, psk_group_id=group_id, psk_epoch=epoch)


# --- proposals (§12.1) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Add(_Struct):
    """§12.1.1: add the owner of a KeyPackage."""

    TYPE: ClassVar[ProposalType] = ProposalType.ADD
    key_package: KeyPackage

    def encode(self, w: Writer) -> None:
        self.key_package.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(KeyPackage.decode(r))


@dataclass(frozen=True)
class Update(_Struct):
    """§12.1.2: the sender replaces its own leaf."""

    TYPE: ClassVar[ProposalType] = ProposalType.UPDATE
    leaf_node: LeafNode

    def encode(self, w: Writer) -> None:
        self.leaf_node.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(LeafNode.decode(r))


@dataclass(frozen=True)
class Remove(_Struct):
    """§12.1.3: remove the member at leaf index ``removed``."""

    TYPE: ClassVar[ProposalType] = ProposalType.REMOVE
    removed: int

    def encode(self, w: Writer) -> None:
        w.u32(self.removed)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.u32())


@dataclass(frozen=True)
class PreSharedKey(_Struct):
    """§12.1.4: inject a PSK into the next epoch."""

    TYPE: ClassVar[ProposalType] = ProposalType.PSK
    psk: PreSharedKeyID

    def encode(self, w: Writer) -> None:
        self.psk.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(PreSharedKeyID.decode(r))


@dataclass(frozen=True)
class ReInit(_Struct):
    """§12.1.5: close this group in favour of a new one with other parameters."""

    TYPE: ClassVar[ProposalType] = ProposalType.REINIT
    group_id: bytes
    version: ProtocolVersion
    cipher_suite: int
    extensions: tuple[Extension, ...] = ()

    def encode(self, w: Writer) -> None:
        w.opaque(self.group_id).u16(self.version).u16(self.cipher_suite)
        _put_extensions(w, self.extensions)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        group_id = r.opaque()
        version = _enum(ProtocolVersion, r.u16())
        return cls(group_id, version, r.u16(), _get_extensions(r))


@dataclass(frozen=True)
class ExternalInit(_Struct):
    """§12.1.6: the KEM output an external joiner derives its init secret from."""

    TYPE: ClassVar[ProposalType] = ProposalType.EXTERNAL_INIT
    kem_output: bytes

    def encode(self, w: Writer) -> None:
        w.opaque(self.kem_output)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque())


@dataclass(frozen=True)
class GroupContextExtensions(_Struct):
    """§12.1.7: replace the group's GroupContext extensions."""

    TYPE: ClassVar[ProposalType] = ProposalType.GROUP_CONTEXT_EXTENSIONS
    extensions: tuple[Extension, ...]

    def encode(self, w: Writer) -> None:
        _put_extensions(w, self.extensions)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(_get_extensions(r))


ProposalBody: TypeAlias = (
    Add | Update | Remove | PreSharedKey | ReInit | ExternalInit | GroupContextExtensions
)

_PROPOSAL_BODIES: dict[ProposalType, type[ProposalBody]] = {
    body.TYPE: body
    for body in (Add, Update, Remove, PreSharedKey, ReInit, ExternalInit, GroupContextExtensions)
}


@dataclass(frozen=True)
class Proposal(_Struct):
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
        kind = _enum(ProposalType, r.u16())
        return cls(_PROPOSAL_BODIES[kind].decode(r))


@dataclass(frozen=True)
class ProposalOrRef(_Struct):
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
        if _enum(ProposalOrRefType, r.u8()) is ProposalOrRefType.PROPOSAL:
            return cls(Proposal.decode(r))
        return cls(r.opaque())


@dataclass(frozen=True)
class Commit(_Struct):
    """§12.4: the proposals a Commit applies and, usually, the committer's UpdatePath
    (openmls's Add commits carry one, decision record §1)."""

    proposals: tuple[ProposalOrRef, ...]
    path: UpdatePath | None = None

    def encode(self, w: Writer) -> None:
        w.vector(self.proposals, _put).optional(self.path, _put)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(tuple(r.vector(ProposalOrRef.decode)), r.optional(UpdatePath.decode))


# --- group context (§8.1) -------------------------------------------------------------------


@dataclass(frozen=True)
class GroupContext(_Struct):
    """§8.1: the state every key derivation and every member signature is bound to."""

    cipher_suite: int
    group_id: bytes
    epoch: int
    tree_hash: bytes
    confirmed_transcript_hash: bytes
    extensions: tuple[Extension, ...] = ()
    version: ProtocolVersion = ProtocolVersion.MLS10

    def encode(self, w: Writer) -> None:
        w.u16(self.version).u16(self.cipher_suite).opaque(self.group_id).u64(self.epoch)
        w.opaque(self.tree_hash).opaque(self.confirmed_transcript_hash)
        _put_extensions(w, self.extensions)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        version = _enum(ProtocolVersion, r.u16())
        cipher_suite = r.u16()
        group_id = r.opaque()
        epoch = r.u64()
        tree_hash = r.opaque()
        transcript = r.opaque()
        return cls(
            cipher_suite, group_id, epoch, tree_hash, transcript, _get_extensions(r), version
        )


# --- framing (§6) --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sender(_Struct):
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
        kind = _enum(SenderType, r.u8())
        if kind in (SenderType.MEMBER, SenderType.EXTERNAL):
            return cls(kind, r.u32())
        return cls(kind)


ApplicationData: TypeAlias = bytes
Content: TypeAlias = ApplicationData | Proposal | Commit

_CONTENT_CLASS: dict[ContentType, type] = {
    ContentType.APPLICATION: bytes,
    ContentType.PROPOSAL: Proposal,
    ContentType.COMMIT: Commit,
}


def _check_content(content_type: ContentType, content: Content, what: str) -> None:
    if not isinstance(content, _CONTENT_CLASS[content_type]):
        raise ValueError(f"{what}: content does not match content_type {content_type.name}")


def _put_content(w: Writer, content: Content) -> None:
    """The ``select (content_type)`` body shared by FramedContent and PrivateMessageContent."""
    if isinstance(content, bytes):
        w.opaque(content)
    else:
        content.encode(w)


def _get_content(r: Reader, content_type: ContentType) -> Content:
    if content_type is ContentType.APPLICATION:
        return r.opaque()
    if content_type is ContentType.PROPOSAL:
        return Proposal.decode(r)
    return Commit.decode(r)


@dataclass(frozen=True)
class FramedContent(_Struct):
    """§6: the authenticated content of a handshake or application message; ``content`` is
    the application data (bytes), a Proposal or a Commit, as ``content_type`` says."""

    group_id: bytes
    epoch: int
    sender: Sender
    authenticated_data: bytes
    content_type: ContentType
    content: Content

    def __post_init__(self) -> None:
        _check_content(self.content_type, self.content, "FramedContent")

    def encode(self, w: Writer) -> None:
        w.opaque(self.group_id).u64(self.epoch)
        self.sender.encode(w)
        w.opaque(self.authenticated_data).u8(self.content_type)
        _put_content(w, self.content)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        group_id = r.opaque()
        epoch = r.u64()
        sender = Sender.decode(r)
        authenticated_data = r.opaque()
        content_type = _enum(ContentType, r.u8())
        content = _get_content(r, content_type)
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
class AuthenticatedContent(_Struct):
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
        wire_format = _enum(WireFormat, r.u16())
        content = FramedContent.decode(r)
        return cls(wire_format, content, FramedContentAuthData.decode(r, content.content_type))

    def confirmed_transcript_hash_input(self) -> bytes:
        """§8.2 ConfirmedTranscriptHashInput of this Commit."""
        return ConfirmedTranscriptHashInput(
            self.wire_format, self.content, self.auth.signature
        ).to_bytes()


@dataclass(frozen=True)
class ConfirmedTranscriptHashInput(_Struct):
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
        wire_format = _enum(WireFormat, r.u16())
        content = FramedContent.decode(r)
        if content.content_type is not ContentType.COMMIT:
            raise DecodeError("ConfirmedTranscriptHashInput: content is not a commit")
        return cls(wire_format, content, r.opaque())


@dataclass(frozen=True)
class InterimTranscriptHashInput(_Struct):
    """§8.2: the confirmation tag, chained into the next epoch's transcript."""

    confirmation_tag: bytes

    def encode(self, w: Writer) -> None:
        w.opaque(self.confirmation_tag)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque())


@dataclass(frozen=True)
class PublicMessage(_Struct):
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
class PrivateMessage(_Struct):
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
        content_type = _enum(ContentType, r.u8())
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
        _put_content(w, self.content)
        self.auth.encode(w)
        w.raw(bytes(self.padding))
        return bytes(w)

    @classmethod
    def from_bytes(cls, data: bytes, content_type: ContentType) -> Self:
        """Decode a plaintext; any non-zero padding byte raises ``PaddingError`` ("MUST be
        rejected", §6.3.1: padding is not authenticated separately)."""
        r = Reader(data, "PrivateMessageContent")
        content = _get_content(r, content_type)
        auth = FramedContentAuthData.decode(r, content_type)
        padding = r.raw(r.remaining)
        if padding.count(0) != len(padding):
            raise PaddingError("PrivateMessageContent: padding has non-zero bytes")
        return cls(content, auth, len(padding))


@dataclass(frozen=True)
class SenderData(_Struct):
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
class SenderDataAAD(_Struct):
    """§6.3.2: the associated data of the sender-data encryption."""

    group_id: bytes
    epoch: int
    content_type: ContentType

    def encode(self, w: Writer) -> None:
        w.opaque(self.group_id).u64(self.epoch).u8(self.content_type)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), r.u64(), _enum(ContentType, r.u8()))


@dataclass(frozen=True)
class PrivateContentAAD(_Struct):
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
        return cls(r.opaque(), r.u64(), _enum(ContentType, r.u8()), r.opaque())


# --- Welcome and GroupInfo (§12.4.3) ---------------------------------------------------------


@dataclass(frozen=True)
class GroupInfo(_Struct):
    """§12.4.3: the group's state for a joiner, signed by the committer (leaf ``signer``).
    Orange puts no ratchet_tree extension here: the tree travels beside the Welcome."""

    group_context: GroupContext
    extensions: tuple[Extension, ...]
    confirmation_tag: bytes
    signer: int
    signature: bytes = b""

    def _encode_content(self, w: Writer) -> None:
        self.group_context.encode(w)
        _put_extensions(w, self.extensions)
        w.opaque(self.confirmation_tag).u32(self.signer)

    def tbs(self) -> bytes:
        """§12.4.3 GroupInfoTBS, signed with label "GroupInfoTBS"."""
        w = Writer()
        self._encode_content(w)
        return bytes(w)

    def encode(self, w: Writer) -> None:
        self._encode_content(w)
        w.opaque(self.signature)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        context = GroupContext.decode(r)
        extensions = _get_extensions(r)
        tag = r.opaque()
        return cls(context, extensions, tag, r.u32(), r.opaque())


@dataclass(frozen=True)
class PathSecret(_Struct):
    """§12.4.3: the path secret of the joiner's lowest common ancestor with the committer."""

    path_secret: bytes = field(repr=False)

    def encode(self, w: Writer) -> None:
        w.opaque(self.path_secret)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque())


@dataclass(frozen=True)
class GroupSecrets(_Struct):
    """§12.4.3: what a Welcome encrypts to one joiner's init key. Secrets stay out of
    ``repr`` so a log line can never carry them."""

    joiner_secret: bytes = field(repr=False)
    path_secret: PathSecret | None = field(default=None, repr=False)
    psks: tuple[PreSharedKeyID, ...] = ()

    def encode(self, w: Writer) -> None:
        w.opaque(self.joiner_secret).optional(self.path_secret, _put).vector(self.psks, _put)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        joiner_secret = r.opaque()
        path_secret = r.optional(PathSecret.decode)
        return cls(joiner_secret, path_secret, tuple(r.vector(PreSharedKeyID.decode)))


@dataclass(frozen=True)
class EncryptedGroupSecrets(_Struct):
    """§12.4.3: GroupSecrets sealed to the KeyPackage whose KeyPackageRef is
    ``new_member``."""

    new_member: bytes
    encrypted_group_secrets: HPKECiphertext

    def encode(self, w: Writer) -> None:
        w.opaque(self.new_member)
        self.encrypted_group_secrets.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), HPKECiphertext.decode(r))


@dataclass(frozen=True)
class Welcome(_Struct):
    """§12.4.3: one EncryptedGroupSecrets per joiner and the GroupInfo encrypted under the
    welcome key. A Welcome with no entry for us is not ours (Orange ignores it too)."""

    cipher_suite: int
    secrets: tuple[EncryptedGroupSecrets, ...]
    encrypted_group_info: bytes

    def encode(self, w: Writer) -> None:
        w.u16(self.cipher_suite).vector(self.secrets, _put).opaque(self.encrypted_group_info)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        cipher_suite = r.u16()
        secrets = tuple(r.vector(EncryptedGroupSecrets.decode))
        return cls(cipher_suite, secrets, r.opaque())


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
class MLSMessage(_Struct):
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
        _enum(ProtocolVersion, r.u16())
        wire_format = _enum(WireFormat, r.u16())
        return cls(_MLS_BODIES[wire_format].decode(r))
