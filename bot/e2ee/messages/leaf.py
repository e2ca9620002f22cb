"""Members' leaves and what they are made of (RFC 9420 §5.3, §7, §10, §12.4.3.3, §13).

Extensions (kept opaque, §13), credentials, capabilities (GREASE values survive, §13.5),
lifetimes, ``LeafNode``, ``KeyPackage``, ``ParentNode`` and the ratchet tree's wire
encoding as Orange sends it beside the Welcome (``encode_ratchet_tree`` /
``decode_ratchet_tree``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self, TypeAlias

from bot.e2ee.codec import DecodeError, Reader, Writer
from bot.e2ee.messages.base import Struct, put
from bot.e2ee.messages.enums import (
    CIPHER_SUITE_1,
    CredentialType,
    LeafNodeSource,
    NodeType,
    ProtocolVersion,
    closed,
)


@dataclass(frozen=True)
class Extension(Struct):
    """§13: ``extension_type`` + opaque data; unknown types are kept, never dropped, because
    they are covered by signatures and the tree hash."""

    extension_type: int
    extension_data: bytes

    def encode(self, w: Writer) -> None:
        w.u16(self.extension_type).opaque(self.extension_data)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.u16(), r.opaque())


def put_extensions(w: Writer, extensions: tuple[Extension, ...]) -> None:
    w.vector(extensions, put)


def get_extensions(r: Reader) -> tuple[Extension, ...]:
    """§13.4: an extension list "MUST NOT contain more than one extension of any given
    type"; a duplicate would make the two sides disagree on which one applies."""
    extensions = tuple(r.vector(Extension.decode))
    types = [e.extension_type for e in extensions]
    if len(set(types)) != len(types):
        raise DecodeError("extensions: duplicate extension type")
    return extensions


@dataclass(frozen=True)
class Credential(Struct):
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
        kind = closed(CredentialType, r.u16())
        if kind is CredentialType.BASIC:
            return cls(kind, identity=r.opaque())
        return cls(kind, certificates=tuple(r.vector(Reader.opaque)))


@dataclass(frozen=True)
class Capabilities(Struct):
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
class Lifetime(Struct):
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
class LeafNode(Struct):
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
        put_extensions(w, self.extensions)

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
        source = closed(LeafNodeSource, r.u8())
        lifetime = Lifetime.decode(r) if source is LeafNodeSource.KEY_PACKAGE else None
        parent_hash = r.opaque() if source is LeafNodeSource.COMMIT else None
        extensions = get_extensions(r)
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
class KeyPackage(Struct):
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
        put_extensions(w, self.extensions)

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
        version = closed(ProtocolVersion, r.u16())
        cipher_suite = r.u16()
        init_key = r.opaque()
        leaf_node = LeafNode.decode(r)
        extensions = get_extensions(r)
        signature = r.opaque()
        return cls(cipher_suite, init_key, leaf_node, extensions, signature, version)


@dataclass(frozen=True)
class ParentNode(Struct):
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
    if closed(NodeType, r.u8()) is NodeType.LEAF:
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
