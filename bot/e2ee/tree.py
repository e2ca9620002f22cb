"""The ratchet tree of RFC 9420 (§4, §7): tree math, hashes, validation, TreeKEM.

The tree is the group's membership and its key hierarchy at once, so it is where an
implementation is most easily wrong (the decision record, docs/e2ee-mls-choice.md §3, saw a
library fail exactly here) and where a mistake costs most: a Commit that openmls cannot
process panics every Orange Meets peer. Everything here follows the RFC's text closely and
every check raises ``TreeError``; nothing is skipped "optimistically".

Layout: the array representation of Appendix C (leaf ``i`` at node ``2*i``, parents at odd
indices, always ``2^(d+1) - 1`` nodes, i.e. a full tree of ``2^d`` leaves, §7.7).

- Tree math (§4.1, Appendix C): ``level``, ``left``, ``right``, ``parent``, ``sibling``,
  ``root``, ``node_width``, ``direct_path``, ``copath``, ``common_ancestor``.
- ``RatchetTree``: the public tree. Resolution and filtered direct path (§4.1.1-4.1.2),
  tree hash (§7.8), parent hashes (§7.9), the joiner's checks (§12.4.3.1), the proposal
  operations (§12.1.1-12.1.3) and TreeKEM: merging and decrypting a received UpdatePath
  (§7.5-7.6, §12.4.2), making one for our own Commit (§7.4-7.6, §12.4.1), and a
  joiner's keys from a Welcome's path secret (§12.4.3.1).

Private keys never live in the tree object (it is public state, shared by every member):
they are passed in and returned as ``{node index: private key}`` maps, and the returned
``PathSecrets`` hides its contents from ``repr``. No error message names a key or secret.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Final

from bot.e2ee import crypto
from bot.e2ee.codec import Writer
from bot.e2ee.messages import (
    HPKECiphertext,
    LeafNode,
    LeafNodeSource,
    Node,
    NodeType,
    ParentNode,
    UpdatePath,
    UpdatePathNode,
    decode_ratchet_tree,
    encode_ratchet_tree,
)

__all__ = [
    "LEAF_NODE_LABEL",
    "UPDATE_PATH_LABEL",
    "PathSecrets",
    "RatchetTree",
    "TreeError",
    "common_ancestor",
    "copath",
    "direct_path",
    "in_subtree",
    "left",
    "level",
    "node_width",
    "parent",
    "right",
    "root",
    "sibling",
]

UPDATE_PATH_LABEL: Final = "UpdatePathNode"
LEAF_NODE_LABEL: Final = "LeafNodeTBS"
# §7.2: extension types that are "default" and need not be listed in capabilities.
_DEFAULT_EXTENSIONS: Final = frozenset({1, 2, 3, 4, 5})


class TreeError(ValueError):
    """A ratchet tree or UpdatePath that RFC 9420 says to reject. The message names the
    node or leaf index and the rule broken, never a key or a secret."""


# --- tree math (RFC 9420 §4.1, Appendix C) -------------------------------------------------


def level(x: int) -> int:
    """Appendix C: the number of trailing one bits; leaves (even indices) are level 0."""
    if x < 0:
        raise ValueError(f"node index {x} is negative")
    k = 0
    while (x >> k) & 1:
        k += 1
    return k


def node_width(n: int) -> int:
    """Appendix C: the number of nodes of a tree with ``n`` leaves."""
    return 0 if n == 0 else 2 * (n - 1) + 1


def root(n: int) -> int:
    """Appendix C: the root of a tree with ``n`` leaves (``2^d - 1`` for ``2^d`` leaves)."""
    if n < 1:
        raise ValueError("a tree has at least one leaf")
    return (1 << (node_width(n).bit_length() - 1)) - 1


def left(x: int) -> int:
    """Appendix C: the left child of parent node ``x``."""
    k = level(x)
    if k == 0:
        raise ValueError(f"node {x} is a leaf and has no children")
    return x ^ (0x01 << (k - 1))


def right(x: int) -> int:
    """Appendix C: the right child of parent node ``x``."""
    k = level(x)
    if k == 0:
        raise ValueError(f"node {x} is a leaf and has no children")
    return x ^ (0x03 << (k - 1))


def _check_node(x: int, n: int) -> None:
    if not 0 <= x < node_width(n):
        raise ValueError(f"node {x} is not in a tree of {n} leaves")


def parent(x: int, n: int) -> int:
    """Appendix C: the parent of ``x`` in a (full, §7.7) tree of ``n`` leaves."""
    _check_node(x, n)
    if x == root(n):
        raise ValueError(f"node {x} is the root and has no parent")
    k = level(x)
    b = (x >> (k + 1)) & 0x01
    return (x | (1 << k)) ^ (b << (k + 1))


def sibling(x: int, n: int) -> int:
    """Appendix C: the other child of ``x``'s parent."""
    p = parent(x, n)
    return right(p) if x < p else left(p)


def direct_path(x: int, n: int) -> list[int]:
    """§4.1.2: ``x``'s ancestors, from its parent up to the root."""
    _check_node(x, n)
    path: list[int] = []
    r = root(n)
    while x != r:
        x = parent(x, n)
        path.append(x)
    return path


def copath(x: int, n: int) -> list[int]:
    """§4.1.2: the siblings of ``x`` and of its ancestors below the root."""
    path = direct_path(x, n)
    return [sibling(y, n) for y in [x, *path[:-1]]] if path else []


def in_subtree(ancestor: int, x: int) -> bool:
    """Whether node ``x`` is ``ancestor`` or below it: a node of level ``k`` spans the
    ``2^(k+1) - 1`` indices centred on it."""
    return abs(x - ancestor) < (1 << level(ancestor))


def common_ancestor(x: int, y: int, n: int) -> int:
    """Appendix C: the lowest node whose subtree holds both ``x`` and ``y`` (§12.4.3.1:
    where a joiner's path secret from the committer enters)."""
    _check_node(y, n)
    for candidate in [x, *direct_path(x, n)]:
        if in_subtree(candidate, y):
            return candidate
    raise ValueError(f"nodes {x} and {y} have no common ancestor")  # unreachable in one tree


def _leaf_node_index(leaf: int) -> int:
    return 2 * leaf


# --- secrets out of a TreeKEM operation ----------------------------------------------------


@dataclass(frozen=True, repr=False)
class PathSecrets:
    """What TreeKEM gives a member (§7.4-7.6): the ``commit_secret`` for the key schedule
    (§8), the path secret of each node it now knows (a committer needs them for the
    Welcome's ``path_secret``, §12.4.3.1) and the HPKE private keys of those nodes, by node
    index. ``repr`` lists the nodes only, so a log line cannot carry a secret."""

    commit_secret: bytes
    path_secrets: Mapping[int, bytes]
    private_keys: Mapping[int, bytes]

    def __repr__(self) -> str:
        return f"PathSecrets(nodes={sorted(self.private_keys)})"


def _derive_path(path_secret: bytes, count: int) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """§7.4: ``count`` path secrets from the first, each node's key pair, and (as the last
    entry of the first list) the next path secret, which is the commit_secret (§12.4.1).

    ``path_secret[n+1] = DeriveSecret(path_secret[n], "path")``;
    ``node_priv, node_pub = DeriveKeyPair(DeriveSecret(path_secret[n], "node"))``.
    """
    secrets = [path_secret]
    pairs = []
    for _ in range(count):
        pairs.append(crypto.derive_key_pair(crypto.derive_secret(secrets[-1], "node")))
        secrets.append(crypto.derive_secret(secrets[-1], "path"))
    return secrets, pairs


def _checked_path(nodes: list[int], path_secret: bytes, public_keys: list[bytes]) -> PathSecrets:
    """Derive the path from ``path_secret`` over ``nodes`` (§7.4) and check each derived
    public key against the one announced for the node (§7.6 step 6; §12.4.3.1): a
    mismatch means a bad UpdatePath or Welcome, and keys from it must not be used."""
    secrets, pairs = _derive_path(path_secret, len(nodes))
    for p, expected, (_, public) in zip(nodes, public_keys, pairs, strict=True):
        if expected != public:
            raise TreeError(f"node {p}: public key does not match its path secret")
    return PathSecrets(
        commit_secret=secrets[-1],
        path_secrets=dict(zip(nodes, secrets[:-1], strict=True)),
        private_keys={p: private for p, (private, _) in zip(nodes, pairs, strict=True)},
    )


# --- hash inputs (§7.8, §7.9) --------------------------------------------------------------


def _put(w: Writer, node: Node) -> None:
    node.encode(w)


def _leaf_hash(leaf_index: int, leaf: LeafNode | None) -> bytes:
    """§7.8 TreeHashInput for a leaf: ``node_type, LeafNodeHashInput {uint32 leaf_index;
    optional<LeafNode> leaf_node}``."""
    w = Writer().u8(NodeType.LEAF).u32(leaf_index).optional(leaf, _put)
    return crypto.hash_(bytes(w))


def _parent_node_hash(node: ParentNode | None, left_hash: bytes, right_hash: bytes) -> bytes:
    """§7.8 TreeHashInput for a parent: ``node_type, ParentNodeHashInput
    {optional<ParentNode> parent_node; opaque left_hash<V>; opaque right_hash<V>}``."""
    w = Writer().u8(NodeType.PARENT).optional(node, _put)
    return crypto.hash_(bytes(w.opaque(left_hash).opaque(right_hash)))


def _parent_hash(node: ParentNode, original_sibling_tree_hash: bytes) -> bytes:
    """§7.9 ParentHashInput: ``encryption_key, parent_hash<V>,
    original_sibling_tree_hash<V>``. It chains a node's key to the keys above it and to
    the subtree its path secret was encrypted to."""
    w = Writer().opaque(node.encryption_key).opaque(node.parent_hash)
    return crypto.hash_(bytes(w.opaque(original_sibling_tree_hash)))


def _stored_parent_hash(node: Node | None) -> bytes | None:
    """The ``parent_hash`` a node carries: parents always, leaves only when they were set
    by a Commit (``leaf_node_source = commit``, §7.2)."""
    if node is None:
        return None
    return node.parent_hash


def _signed_commit_leaf(
    template: LeafNode,
    *,
    encryption_key: bytes,
    parent_hash: bytes,
    signature_private_key: bytes,
    group_id: bytes,
    leaf_index: int,
) -> LeafNode:
    """§7.5 step 4: the committer's new leaf, source ``commit``, new key and parent hash,
    signed over the group and its position. Checked against its own signature_key before
    it leaves: a leaf signed with the wrong key would be rejected by every peer, and an
    openmls peer (Orange) panics on a Commit it rejects (decision record §1)."""
    unsigned = replace(
        template,
        encryption_key=encryption_key,
        leaf_node_source=LeafNodeSource.COMMIT,
        lifetime=None,
        parent_hash=parent_hash,
        signature=b"",
    )
    tbs = unsigned.tbs(group_id, leaf_index)
    leaf = replace(
        unsigned, signature=crypto.sign_with_label(signature_private_key, LEAF_NODE_LABEL, tbs)
    )
    RatchetTree.verify_leaf_signature(leaf, leaf_index, group_id)
    return leaf


# --- the tree ------------------------------------------------------------------------------


class RatchetTree:
    """The public ratchet tree of one epoch (§7): nodes in array order, blanks as ``None``.

    Mutating methods (``add_leaf``, ``remove_leaf``, ``update_leaf``, ``apply_update_path``,
    ``encrypt_path``) change the tree in place; use ``copy()`` to keep the old epoch's tree
    (a Commit is applied to a provisional copy and adopted only once it verified).
    ``apply_update_path`` and ``encrypt_path`` leave the tree unchanged when they raise.
    """

    def __init__(self, nodes: Iterable[Node | None]) -> None:
        """Takes the nodes of a full tree, or fewer: the list is extended with blanks to
        ``2^(d+1) - 1`` nodes, as §12.4.3.3 tells a receiver to do."""
        self._nodes: list[Node | None] = list(nodes)
        if not self._nodes:
            raise TreeError("a ratchet tree has at least one node")
        width = 1
        while width < len(self._nodes):
            width = 2 * width + 1
        self._nodes.extend([None] * (width - len(self._nodes)))
        for x, node in enumerate(self._nodes):
            if node is not None and isinstance(node, LeafNode) != (x % 2 == 0):
                raise TreeError(f"node {x} has the wrong type for its position")

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetTree:
        """Decode the ``ratchet_tree`` encoding (§12.4.3.3): the out-of-band tree Orange
        sends beside its Welcome. Structure only; ``validate`` does the joiner's checks."""
        return cls(decode_ratchet_tree(data))

    def to_bytes(self) -> bytes:
        """The ``ratchet_tree`` encoding (§12.4.3.3), trailing blanks dropped: what a
        committer sends beside its Welcome."""
        return encode_ratchet_tree(self._nodes)

    def copy(self) -> RatchetTree:
        """An independent tree (nodes are immutable, so a shallow copy suffices)."""
        return RatchetTree(self._nodes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RatchetTree) and self._nodes == other._nodes

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        members = [i for i, _ in self.members()]
        return f"RatchetTree(leaves={self.leaf_count}, members={members})"

    # --- access ---

    @property
    def nodes(self) -> list[Node | None]:
        """A copy of the node array: editing it cannot bypass the tree's invariants."""
        return list(self._nodes)

    @property
    def node_count(self) -> int:
        return len(self._nodes)

    @property
    def leaf_count(self) -> int:
        return (len(self._nodes) + 1) // 2

    def node(self, x: int) -> Node | None:
        _check_node(x, self.leaf_count)
        return self._nodes[x]

    def leaf(self, leaf_index: int) -> LeafNode | None:
        """The LeafNode at ``leaf_index``, or ``None`` for a blank leaf."""
        if not 0 <= leaf_index < self.leaf_count:
            raise TreeError(f"leaf {leaf_index} is not in a tree of {self.leaf_count} leaves")
        node = self._nodes[_leaf_node_index(leaf_index)]
        assert node is None or isinstance(node, LeafNode)
        return node

    def members(self) -> Iterator[tuple[int, LeafNode]]:
        """The non-blank leaves as (leaf index, LeafNode), left to right."""
        for x in range(0, len(self._nodes), 2):
            node = self._nodes[x]
            if isinstance(node, LeafNode):
                yield x // 2, node

    def index_of(self, leaf_node: LeafNode) -> int | None:
        """The leaf index holding exactly ``leaf_node`` (§12.4.3.1: a joiner finds its own
        leaf as the one identical to its KeyPackage's), or ``None``."""
        for index, node in self.members():
            if node == leaf_node:
                return index
        return None

    def _parent_at(self, x: int) -> ParentNode:
        node = self._nodes[x]
        if not isinstance(node, ParentNode):
            raise TreeError(f"node {x} is not a non-blank parent node")
        return node

    # --- resolution and paths (§4.1) ---

    def resolution(self, x: int, excluded_leaves: Iterable[int] = ()) -> list[int]:
        """§4.1.1: the non-blank nodes covering ``x``'s subtree, depth-first and left
        first; a non-blank parent brings its unmerged leaves. ``excluded_leaves`` (leaf
        indices) are left out: §7.6 excludes the leaves added by the Commit being made."""
        _check_node(x, self.leaf_count)
        excluded = {_leaf_node_index(leaf) for leaf in excluded_leaves}
        return [y for y in self._resolve(x) if y not in excluded]

    def _resolve(self, x: int) -> list[int]:
        node = self._nodes[x]
        if isinstance(node, ParentNode):
            return [x, *(_leaf_node_index(leaf) for leaf in node.unmerged_leaves)]
        if node is not None:
            return [x]
        if level(x) == 0:
            return []
        return self._resolve(left(x)) + self._resolve(right(x))

    def _path_with_copath(self, leaf_index: int) -> list[tuple[int, int]]:
        """(direct path node, its child on the copath) for each node above the leaf."""
        x = _leaf_node_index(leaf_index)
        path = direct_path(x, self.leaf_count)
        return [
            (p, sibling(c, self.leaf_count)) for p, c in zip(path, [x, *path[:-1]], strict=True)
        ]

    def filtered_direct_path(self, leaf_index: int) -> list[int]:
        """§4.1.2: the direct path without the nodes whose copath child has an empty
        resolution (a key there would only duplicate the child's): the nodes an
        UpdatePath carries, in order."""
        return [p for p, c in self._filtered_path(leaf_index)]

    def _filtered_path(self, leaf_index: int) -> list[tuple[int, int]]:
        self.leaf(leaf_index)  # range check
        return [(p, c) for p, c in self._path_with_copath(leaf_index) if self._resolve(c)]

    # --- tree hash (§7.8) ---

    def tree_hash(self) -> bytes:
        """§7.8: the root's tree hash, which the GroupContext carries so that the members
        agree on the whole tree."""
        return self._subtree_hash(root(self.leaf_count), frozenset(), {})

    def tree_hashes(self) -> list[bytes]:
        """§7.8: the tree hash of every node, in array order."""
        memo: dict[int, bytes] = {}
        self._subtree_hash(root(self.leaf_count), frozenset(), memo)
        return [memo[x] for x in range(len(self._nodes))]

    def _subtree_hash(self, x: int, removed: frozenset[int], memo: dict[int, bytes]) -> bytes:
        """Tree hash of ``x``'s subtree with the leaves in ``removed`` blanked and dropped
        from every unmerged_leaves list: the "original" tree of §7.9."""
        node = self._nodes[x]
        if level(x) == 0:
            leaf = None if x // 2 in removed else node
            assert leaf is None or isinstance(leaf, LeafNode)
            digest = _leaf_hash(x // 2, leaf)
        else:
            assert node is None or isinstance(node, ParentNode)
            if node is not None and removed:
                kept = tuple(i for i in node.unmerged_leaves if i not in removed)
                node = replace(node, unmerged_leaves=kept)
            left_hash = self._subtree_hash(left(x), removed, memo)
            right_hash = self._subtree_hash(right(x), removed, memo)
            digest = _parent_node_hash(node, left_hash, right_hash)
        memo[x] = digest
        return digest

    def _original_sibling_hash(self, s: int, removed: frozenset[int], hashes: list[bytes]) -> bytes:
        """§7.9 ``original_sibling_tree_hash`` of sibling ``s`` under a parent whose
        unmerged leaves are ``removed``; the current hash when none of them is below."""
        if not any(in_subtree(s, _leaf_node_index(leaf)) for leaf in removed):
            return hashes[s]
        return self._subtree_hash(s, removed, {})

    # --- parent hashes (§7.9) ---

    def verify_parent_hashes(self) -> None:
        """§7.9.2, "top down": every non-blank parent node must have exactly one
        descendant whose parent hash is valid with respect to it. Together this chains
        every parent node down to a leaf whose signature covers the chain, so no parent
        key was planted by someone outside the group (§12.4.3.1 asks this of joiners)."""
        hashes = self.tree_hashes()
        for p in range(1, len(self._nodes), 2):
            if self._nodes[p] is not None and self._parent_hash_links(p, hashes) != 1:
                raise TreeError(f"parent node {p} is not parent-hash valid")

    def _parent_hash_links(self, p: int, hashes: list[bytes]) -> int:
        """How many descendants D of ``p`` are parent-hash valid with respect to it
        (§7.9.2): D in the resolution of child C, D's parent_hash equal to the parent
        hash of ``p`` with copath child S, and ``p``'s unmerged leaves below C equal to
        C's resolution without D."""
        node = self._parent_at(p)
        removed = frozenset(node.unmerged_leaves)
        links = 0
        for c, s in ((left(p), right(p)), (right(p), left(p))):
            expected = _parent_hash(node, self._original_sibling_hash(s, removed, hashes))
            unmerged_below = {
                _leaf_node_index(leaf) for leaf in removed if in_subtree(c, _leaf_node_index(leaf))
            }
            cover = self._resolve(c)
            for d in cover:
                if (
                    _stored_parent_hash(self._nodes[d]) == expected
                    and set(cover) - {d} == unmerged_below
                ):
                    links += 1
        return links

    # --- validation (§7.3, §12.4.3.1) ---

    def validate(
        self, group_id: bytes, tree_hash: bytes | None = None, now: int | None = None
    ) -> None:
        """What §12.4.3.1 asks a joiner to check of the tree it is given (Orange sends it
        out of band, so nothing else vouches for it): the tree hash against the GroupInfo's
        (when ``tree_hash`` is given), parent-hash validity of every parent node,
        every leaf's validity (§7.3; lifetimes only when ``now`` is given, as the RFC
        merely recommends it for received leaves), the unmerged-leaves rules, and that no
        encryption or signature key appears twice."""
        if tree_hash is not None and tree_hash != self.tree_hash():
            raise TreeError("the ratchet tree does not match the tree hash it should have")
        self.verify_parent_hashes()
        self._check_unmerged_leaves()
        self._check_unique_keys()
        for index, leaf in self.members():
            self.check_leaf(leaf, index, group_id, now)

    def check_leaf(
        self, leaf: LeafNode, leaf_index: int, group_id: bytes, now: int | None = None
    ) -> None:
        """§7.3 leaf node validation for ``leaf`` at ``leaf_index``: the signature (with
        group and position for update/commit leaves, §7.2), the non-default extensions
        listed in its capabilities, its credential type supported by every member and it
        supporting theirs, and, with ``now`` (Unix seconds), a key_package lifetime that
        covers it; its encryption key in no other node and its signature key in no other
        leaf. ``leaf_index`` may be ``leaf_count`` for a KeyPackage's leaf not yet added.
        The leaf_node_source the context demands is the caller's to check."""
        own_x = _leaf_node_index(leaf_index)
        if any(
            node is not None and x != own_x and node.encryption_key == leaf.encryption_key
            for x, node in enumerate(self._nodes)
        ):
            raise TreeError(f"leaf {leaf_index} repeats the encryption key of another node")
        others = [node for i, node in self.members() if i != leaf_index]
        if any(node.signature_key == leaf.signature_key for node in others):
            raise TreeError(f"leaf {leaf_index} repeats the signature key of another leaf")
        self.verify_leaf_signature(leaf, leaf_index, group_id)
        unlisted = {e.extension_type for e in leaf.extensions} - _DEFAULT_EXTENSIONS
        if unlisted - set(leaf.capabilities.extensions):
            raise TreeError(f"leaf {leaf_index} has extensions its capabilities do not list")
        in_use = {node.credential.credential_type for node in others}
        if not in_use <= set(leaf.capabilities.credentials) or any(
            leaf.credential.credential_type not in node.capabilities.credentials
            for node in [leaf, *others]
        ):
            raise TreeError(f"leaf {leaf_index} has a credential type not supported by all")
        lifetime = leaf.lifetime
        if (
            now is not None
            and lifetime is not None
            and not lifetime.not_before <= now <= lifetime.not_after
        ):
            raise TreeError(f"leaf {leaf_index} is outside its lifetime")

    @staticmethod
    def verify_leaf_signature(leaf: LeafNode, leaf_index: int, group_id: bytes) -> None:
        """§7.2: ``VerifyWithLabel(signature_key, "LeafNodeTBS", LeafNodeTBS)``; update
        and commit leaves bind the group id and their leaf index, key_package ones not."""
        tbs = leaf.tbs(group_id, leaf_index)
        if not crypto.verify_with_label(leaf.signature_key, LEAF_NODE_LABEL, tbs, leaf.signature):
            raise TreeError(f"leaf {leaf_index} has an invalid signature")

    def _check_unmerged_leaves(self) -> None:
        """§7.1 and §12.4.3.1: unmerged_leaves sorted, each a non-blank leaf below the
        node, and listed by every non-blank node between it and this one."""
        n = self.leaf_count
        for p in range(1, len(self._nodes), 2):
            node = self._nodes[p]
            if not isinstance(node, ParentNode):
                continue
            leaves = list(node.unmerged_leaves)
            if leaves != sorted(set(leaves)):
                raise TreeError(f"parent node {p}: unmerged_leaves not strictly increasing")
            for leaf in leaves:
                x = _leaf_node_index(leaf)
                if x >= len(self._nodes) or not in_subtree(p, x) or self._nodes[x] is None:
                    raise TreeError(f"parent node {p}: unmerged leaf {leaf} is not a member below")
                for q in direct_path(x, n):
                    if q == p:
                        break
                    between = self._nodes[q]
                    if isinstance(between, ParentNode) and leaf not in between.unmerged_leaves:
                        raise TreeError(f"parent node {q} does not list unmerged leaf {leaf}")

    def _check_unique_keys(self) -> None:
        """§7.3 / §12.4.3.1: an encryption key appears in one node only, a signature key
        in one leaf only (else the tree invariant or sender authentication breaks)."""
        encryption_keys: set[bytes] = set()
        for x, node in enumerate(self._nodes):
            if node is None:
                continue
            if node.encryption_key in encryption_keys:
                raise TreeError(f"node {x} repeats an encryption key of another node")
            encryption_keys.add(node.encryption_key)
        signature_keys: set[bytes] = set()
        for index, leaf in self.members():
            if leaf.signature_key in signature_keys:
                raise TreeError(f"leaf {index} repeats the signature key of another leaf")
            signature_keys.add(leaf.signature_key)

    # --- proposals (§12.1) ---

    def add_leaf(self, leaf_node: LeafNode) -> int:
        """§12.1.1 Add: the leftmost blank leaf, else extend the tree to the right (§7.7);
        the new leaf becomes unmerged at every non-blank node above it, since it does not
        know their private keys. Returns its leaf index. The caller has validated the
        KeyPackage (§10.1)."""
        index = next((i for i in range(self.leaf_count) if self.leaf(i) is None), None)
        if index is None:
            index = self.leaf_count
            self._nodes.extend([None] * (len(self._nodes) + 1))
        x = _leaf_node_index(index)
        for p in direct_path(x, self.leaf_count):
            node = self._nodes[p]
            if isinstance(node, ParentNode):
                merged = tuple(sorted({*node.unmerged_leaves, index}))
                self._nodes[p] = replace(node, unmerged_leaves=merged)
        self._nodes[x] = leaf_node
        return index

    def remove_leaf(self, leaf_index: int) -> None:
        """§12.1.3 Remove: blank the leaf and its direct path, then truncate (§7.7) while
        the right half of the tree is entirely blank."""
        if self.leaf(leaf_index) is None:
            raise TreeError(f"leaf {leaf_index} is blank: nothing to remove")
        x = _leaf_node_index(leaf_index)
        for p in [x, *direct_path(x, self.leaf_count)]:
            self._nodes[p] = None
        while len(self._nodes) > 1:
            half = (len(self._nodes) - 1) // 2
            if any(node is not None for node in self._nodes[half + 1 :]):
                break
            del self._nodes[half:]

    def update_leaf(self, leaf_index: int, leaf_node: LeafNode) -> None:
        """§12.1.2 Update: replace the sender's leaf and blank its direct path (the keys
        above it are known to the old leaf key). The caller has validated the LeafNode;
        §7.3's "different encryption_key" is checked here as it needs the old leaf."""
        old = self.leaf(leaf_index)
        if old is None:
            raise TreeError(f"leaf {leaf_index} is blank: nothing to update")
        if old.encryption_key == leaf_node.encryption_key:
            raise TreeError(f"leaf {leaf_index}: an Update must change the encryption key")
        x = _leaf_node_index(leaf_index)
        for p in direct_path(x, self.leaf_count):
            self._nodes[p] = None
        self._nodes[x] = leaf_node

    # --- TreeKEM (§7.4-7.6, §12.4) ---

    def _merge_path(self, sender: int, keys: list[bytes]) -> bytes:
        """§7.5 "merge UpdatePath into the tree": blank the sender's direct path, put the
        new keys (with no unmerged leaves) on its filtered direct path, and compute the
        parent hashes from the root down. Returns the parent hash the sender's new leaf
        must carry (empty when the filtered direct path is)."""
        path = self._filtered_path(sender)
        if len(keys) != len(path):
            raise TreeError(
                f"UpdatePath from leaf {sender} has {len(keys)} nodes, its filtered direct "
                f"path {len(path)}"
            )
        for p in direct_path(_leaf_node_index(sender), self.leaf_count):
            self._nodes[p] = None
        for (p, _), key in zip(path, keys, strict=True):
            self._nodes[p] = ParentNode(key, b"", ())
        parent_hash = b""
        for p, c in reversed(path):
            node = replace(self._parent_at(p), parent_hash=parent_hash)
            self._nodes[p] = node
            sibling_hash = self._subtree_hash(c, frozenset(), {})
            parent_hash = _parent_hash(node, sibling_hash)
        return parent_hash

    def apply_update_path(self, sender: int, update_path: UpdatePath, group_id: bytes) -> None:
        """§12.4.2: validate the committer's UpdatePath and merge it (§7.5). Checks: the
        new leaf has source ``commit``, a new encryption key and a valid signature and
        capabilities (§7.3), no public key of the path is already in the tree, and its
        parent_hash equals the one recomputed after the merge (§7.9.2). Call it on the
        tree with the Commit's proposals applied; the tree is unchanged if it raises."""
        old = self.leaf(sender)
        leaf = update_path.leaf_node
        if old is None:
            raise TreeError(f"UpdatePath from blank leaf {sender}")
        if leaf.leaf_node_source is not LeafNodeSource.COMMIT:
            raise TreeError(f"UpdatePath from leaf {sender}: leaf_node_source is not commit")
        keys = [node.encryption_key for node in update_path.nodes]
        in_tree = {node.encryption_key for node in self._nodes if node is not None}
        fresh = [leaf.encryption_key, *keys]
        if len(set(fresh)) != len(fresh) or in_tree.intersection(fresh):
            raise TreeError(f"UpdatePath from leaf {sender} reuses an encryption key")
        for index, other in self.members():
            if index != sender and other.signature_key == leaf.signature_key:
                raise TreeError(
                    f"UpdatePath from leaf {sender} reuses leaf {index}'s signature key"
                )
        merged = self.copy()
        expected = merged._merge_path(sender, keys)
        if leaf.parent_hash != expected:
            raise TreeError(f"UpdatePath from leaf {sender}: its leaf's parent_hash is wrong")
        merged._nodes[_leaf_node_index(sender)] = leaf
        merged.check_leaf(leaf, sender, group_id)
        self._nodes = merged._nodes

    def _check_ciphertext_counts(
        self, update_path: UpdatePath, sender: int, excluded: tuple[int, ...]
    ) -> list[tuple[int, int]]:
        """§7.6: one UpdatePathNode per filtered direct path node, each with one
        ciphertext per node of its copath child's resolution (new members excluded)."""
        path = self._filtered_path(sender)
        if len(update_path.nodes) != len(path):
            raise TreeError(
                f"UpdatePath from leaf {sender} has {len(update_path.nodes)} nodes, its "
                f"filtered direct path {len(path)}"
            )
        for (p, c), node in zip(path, update_path.nodes, strict=True):
            if len(node.encrypted_path_secret) != len(self.resolution(c, excluded)):
                raise TreeError(
                    f"UpdatePath node {p}: {len(node.encrypted_path_secret)} ciphertexts for "
                    f"a resolution of {len(self.resolution(c, excluded))}"
                )
        return path

    def decrypt_path(
        self,
        update_path: UpdatePath,
        sender: int,
        own_leaf: int,
        own_private_keys: Mapping[int, bytes],
        *,
        group_context: bytes,
        excluded_leaves: Iterable[int] = (),
    ) -> PathSecrets:
        """§7.5-7.6 / §12.4.2: recover the path secrets of a received UpdatePath.

        Finds the node of the sender's filtered direct path whose copath child is above
        ``own_leaf``, a node of that child's resolution (new members in
        ``excluded_leaves`` left out) whose private key is in ``own_private_keys`` (node
        index -> HPKE private key), decrypts the path secret with label "UpdatePathNode"
        and the serialized provisional GroupContext, derives the rest of the path and
        checks every derived public key against the UpdatePath's. Returns the
        commit_secret and the path secrets and private keys from that node up to the
        root. Works on the tree before or after ``apply_update_path`` (the copath is
        untouched by the merge).
        """
        if sender == own_leaf:
            raise TreeError("an UpdatePath from our own leaf cannot be decrypted by us")
        excluded = tuple(excluded_leaves)
        path = self._check_ciphertext_counts(update_path, sender, excluded)
        start = self._entry(path, own_leaf, sender)
        copath_child = path[start][1]
        resolution = self.resolution(copath_child, excluded)
        holder = next((j for j, y in enumerate(resolution) if y in own_private_keys), None)
        if holder is None:
            raise TreeError(f"no private key for the resolution of copath node {copath_child}")
        sealed = update_path.nodes[start].encrypted_path_secret[holder]
        try:
            path_secret = crypto.decrypt_with_label(
                own_private_keys[resolution[holder]],
                UPDATE_PATH_LABEL,
                group_context,
                sealed.kem_output,
                sealed.ciphertext,
            )
        except crypto.CryptoError:
            raise TreeError(f"cannot decrypt the path secret of node {path[start][0]}") from None
        nodes = [p for p, _ in path[start:]]
        keys = [node.encryption_key for node in update_path.nodes[start:]]
        return _checked_path(nodes, path_secret, keys)

    def welcome_path_secrets(
        self, own_leaf: int, committer: int, path_secret: bytes
    ) -> PathSecrets:
        """§12.4.3.1, for a joiner whose GroupSecrets carry a ``path_secret``: it belongs
        to the lowest common ancestor of our leaf and the committer's (the GroupInfo's
        ``signer``), which is on the committer's filtered direct path; derive the path
        secrets and key pairs from there to the root. Each private key "MUST" match the
        public key in the tree, checked here. Call it on the tree of the new epoch."""
        if committer == own_leaf:
            raise TreeError("a Welcome's path secret cannot come from our own leaf")
        path = self._filtered_path(committer)
        start = self._entry(path, own_leaf, committer)
        nodes = [p for p, _ in path[start:]]
        return _checked_path(nodes, path_secret, self._encryption_keys(nodes))

    def _entry(self, path: list[tuple[int, int]], own_leaf: int, sender: int) -> int:
        """The position in ``sender``'s filtered direct path whose copath child is above
        ``own_leaf``: where a path secret for us enters (our common ancestor, §7.6)."""
        own_x = _leaf_node_index(own_leaf)
        self.leaf(own_leaf)  # range check
        start = next((i for i, (_, c) in enumerate(path) if in_subtree(c, own_x)), None)
        if start is None:
            raise TreeError(f"leaf {own_leaf} is under no copath node of leaf {sender}'s path")
        return start

    def encrypt_path(
        self,
        own_leaf: int,
        signature_private_key: bytes,
        group_id: bytes,
        group_context: Callable[[bytes], bytes],
        *,
        excluded_leaves: Iterable[int] = (),
        leaf_template: LeafNode | None = None,
    ) -> tuple[UpdatePath, PathSecrets]:
        """§7.4-7.6 / §12.4.1: a fresh UpdatePath for our own Commit, merged into this tree.

        Call it on the tree with the Commit's proposals applied. A fresh leaf key pair and
        random first path secret; the path's key pairs and parent hashes; our new leaf
        (``leaf_template`` or the current one, with source ``commit``, the new key and
        parent hash, re-signed with ``signature_private_key`` over group and position);
        then ``group_context(new tree hash)`` gives the serialized provisional GroupContext
        (it depends on the new tree, §12.4.1) under which each path secret is
        HPKE-encrypted to the resolution of its copath child, new members
        (``excluded_leaves``) left out: they get their path secret in the Welcome.
        Returns the UpdatePath and the PathSecrets (private keys include our new leaf's).
        """
        template = self.leaf(own_leaf) if leaf_template is None else leaf_template
        if template is None:
            raise TreeError(f"leaf {own_leaf} is blank: it cannot commit")
        path = self._filtered_path(own_leaf)
        leaf_private, leaf_public = crypto.generate_hpke_key()
        secrets, pairs = _derive_path(os.urandom(crypto.HASH_LEN), len(path))
        merged = self.copy()
        parent_hash = merged._merge_path(own_leaf, [public for _, public in pairs])
        leaf = _signed_commit_leaf(
            template,
            encryption_key=leaf_public,
            parent_hash=parent_hash,
            signature_private_key=signature_private_key,
            group_id=group_id,
            leaf_index=own_leaf,
        )
        merged._nodes[_leaf_node_index(own_leaf)] = leaf
        context = group_context(merged.tree_hash())
        excluded = tuple(excluded_leaves)
        nodes = []
        for (_, c), secret, (_, public) in zip(path, secrets[:-1], pairs, strict=True):
            sealed = [
                HPKECiphertext(*crypto.encrypt_with_label(key, UPDATE_PATH_LABEL, context, secret))
                for key in merged._encryption_keys(merged.resolution(c, excluded))
            ]
            nodes.append(UpdatePathNode(public, tuple(sealed)))
        private_keys = {p: private for (p, _), (private, _) in zip(path, pairs, strict=True)}
        private_keys[_leaf_node_index(own_leaf)] = leaf_private
        self._nodes = merged._nodes
        result = PathSecrets(
            commit_secret=secrets[-1],
            path_secrets={p: s for (p, _), s in zip(path, secrets[:-1], strict=True)},
            private_keys=private_keys,
        )
        return UpdatePath(leaf, tuple(nodes)), result

    def _encryption_keys(self, xs: list[int]) -> list[bytes]:
        keys = []
        for x in xs:
            node = self._nodes[x]
            if node is None:
                raise TreeError(f"node {x} is blank and has no encryption key")
            keys.append(node.encryption_key)
        return keys
