"""Tree hashes and parent hashes of RFC 9420 (§7.8, §7.9), over a ratchet tree's nodes.

The hash inputs (``TreeHashInput`` of §7.8, ``ParentHashInput`` of §7.9) and the subtree
hash, also of the "original" tree of §7.9 (some unmerged leaves removed), computed from
the node array of Appendix C. ``RatchetTree`` (``bot.e2ee.tree``) uses them for its tree
hash, its parent-hash verification (§7.9.2) and the UpdatePath merge (§7.5).

Separate from ``bot.e2ee.tree`` because these are pure functions of a node array, fixed
by the RFC's encodings and checked byte for byte by the test vectors: keeping them apart
keeps the tree class about membership and keys rather than serialization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from bot.e2ee import crypto
from bot.e2ee.codec import Writer
from bot.e2ee.messages import LeafNode, Node, NodeType, ParentNode
from bot.e2ee.treemath import in_subtree, leaf_node_index, left, level, right

__all__ = [
    "leaf_hash",
    "original_sibling_hash",
    "parent_hash",
    "parent_node_hash",
    "stored_parent_hash",
    "subtree_hash",
]


def _put(w: Writer, node: Node) -> None:
    node.encode(w)


def leaf_hash(leaf_index: int, leaf: LeafNode | None) -> bytes:
    """§7.8 TreeHashInput for a leaf: ``node_type, LeafNodeHashInput {uint32 leaf_index;
    optional<LeafNode> leaf_node}``."""
    w = Writer().u8(NodeType.LEAF).u32(leaf_index).optional(leaf, _put)
    return crypto.hash_(bytes(w))


def parent_node_hash(node: ParentNode | None, left_hash: bytes, right_hash: bytes) -> bytes:
    """§7.8 TreeHashInput for a parent: ``node_type, ParentNodeHashInput
    {optional<ParentNode> parent_node; opaque left_hash<V>; opaque right_hash<V>}``."""
    w = Writer().u8(NodeType.PARENT).optional(node, _put)
    return crypto.hash_(bytes(w.opaque(left_hash).opaque(right_hash)))


def parent_hash(node: ParentNode, original_sibling_tree_hash: bytes) -> bytes:
    """§7.9 ParentHashInput: ``encryption_key, parent_hash<V>,
    original_sibling_tree_hash<V>``. It chains a node's key to the keys above it and to
    the subtree its path secret was encrypted to."""
    w = Writer().opaque(node.encryption_key).opaque(node.parent_hash)
    return crypto.hash_(bytes(w.opaque(original_sibling_tree_hash)))


def stored_parent_hash(node: Node | None) -> bytes | None:
    """The ``parent_hash`` a node carries: parents always, leaves only when they were set
    by a Commit (``leaf_node_source = commit``, §7.2)."""
    if node is None:
        return None
    return node.parent_hash


def subtree_hash(
    nodes: Sequence[Node | None], x: int, removed: frozenset[int], memo: dict[int, bytes]
) -> bytes:
    """Tree hash (§7.8) of ``x``'s subtree with the leaves in ``removed`` blanked and
    dropped from every unmerged_leaves list: the "original" tree of §7.9. Every node's
    hash is stored in ``memo``."""
    node = nodes[x]
    if level(x) == 0:
        leaf = None if x // 2 in removed else node
        assert leaf is None or isinstance(leaf, LeafNode)
        digest = leaf_hash(x // 2, leaf)
    else:
        assert node is None or isinstance(node, ParentNode)
        if node is not None and removed:
            kept = tuple(i for i in node.unmerged_leaves if i not in removed)
            node = replace(node, unmerged_leaves=kept)
        left_hash = subtree_hash(nodes, left(x), removed, memo)
        right_hash = subtree_hash(nodes, right(x), removed, memo)
        digest = parent_node_hash(node, left_hash, right_hash)
    memo[x] = digest
    return digest


def original_sibling_hash(
    nodes: Sequence[Node | None], s: int, removed: frozenset[int], hashes: list[bytes]
) -> bytes:
    """§7.9 ``original_sibling_tree_hash`` of sibling ``s`` under a parent whose
    unmerged leaves are ``removed``; the current hash (from ``hashes``, in array order)
    when none of them is below."""
    if not any(in_subtree(s, leaf_node_index(leaf)) for leaf in removed):
        return hashes[s]
    return subtree_hash(nodes, s, removed, {})
