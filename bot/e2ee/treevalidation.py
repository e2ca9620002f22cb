"""What RFC 9420 says to reject in a ratchet tree, and the checks that find it.

The joiner's checks of the tree it is given (``validate``, §12.4.3.1): parent-hash
validity of every parent node (§7.9.2), the unmerged-leaves rules (§7.1), key uniqueness
(§7.3) and leaf node validation (``check_leaf``, §7.3), which members also apply to every
new leaf; and the leaf signature (§7.2). Also owns ``TreeError``, the one exception of
the tree modules, and the "LeafNodeTBS" label.

Separate from ``bot.e2ee.tree`` because these rules are a checklist read against the
RFC's text, independent of how the tree is stored or changed. They read the tree through
its public accessors only; ``RatchetTree`` exposes them as its methods ``validate``,
``check_leaf``, ``verify_parent_hashes`` and ``verify_leaf_signature``, and TreeKEM
(``bot.e2ee.treekem``) verifies its own new leaf's signature here before it leaves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from bot.e2ee import crypto
from bot.e2ee.messages import LeafNode, Node, ParentNode
from bot.e2ee.treehash import original_sibling_hash, parent_hash, stored_parent_hash
from bot.e2ee.treemath import direct_path, in_subtree, leaf_node_index, left, right

if TYPE_CHECKING:
    from bot.e2ee.tree import RatchetTree

__all__ = [
    "LEAF_NODE_LABEL",
    "TreeError",
    "check_leaf",
    "check_unique_keys",
    "check_unmerged_leaves",
    "validate",
    "verify_leaf_signature",
    "verify_parent_hashes",
]

LEAF_NODE_LABEL: Final = "LeafNodeTBS"
# §7.2: extension types that are "default" and need not be listed in capabilities.
_DEFAULT_EXTENSIONS: Final = frozenset({1, 2, 3, 4, 5})


class TreeError(ValueError):
    """A ratchet tree or UpdatePath that RFC 9420 says to reject. The message names the
    node or leaf index and the rule broken, never a key or a secret."""


def validate(
    tree: RatchetTree, group_id: bytes, tree_hash: bytes | None = None, now: int | None = None
) -> None:
    """What §12.4.3.1 asks a joiner to check of the tree it is given (Orange sends it
    out of band, so nothing else vouches for it): the tree hash against the GroupInfo's
    (when ``tree_hash`` is given), parent-hash validity of every parent node,
    every leaf's validity (§7.3; lifetimes only when ``now`` is given, as the RFC
    merely recommends it for received leaves), the unmerged-leaves rules, and that no
    encryption or signature key appears twice."""
    if tree_hash is not None and tree_hash != tree.tree_hash():
        raise TreeError("the ratchet tree does not match the tree hash it should have")
    verify_parent_hashes(tree)
    check_unmerged_leaves(tree)
    check_unique_keys(tree)
    for index, leaf in tree.members():
        check_leaf(tree, leaf, index, group_id, now)


def verify_leaf_signature(leaf: LeafNode, leaf_index: int, group_id: bytes) -> None:
    """§7.2: ``VerifyWithLabel(signature_key, "LeafNodeTBS", LeafNodeTBS)``; update
    and commit leaves bind the group id and their leaf index, key_package ones not."""
    tbs = leaf.tbs(group_id, leaf_index)
    if not crypto.verify_with_label(leaf.signature_key, LEAF_NODE_LABEL, tbs, leaf.signature):
        raise TreeError(f"leaf {leaf_index} has an invalid signature")


def check_leaf(
    tree: RatchetTree, leaf: LeafNode, leaf_index: int, group_id: bytes, now: int | None = None
) -> None:
    """§7.3 leaf node validation for ``leaf`` at ``leaf_index`` of ``tree``: the signature
    (with group and position for update/commit leaves, §7.2), the non-default extensions
    listed in its capabilities, its credential type supported by every member and it
    supporting theirs, and, with ``now`` (Unix seconds), a key_package lifetime that
    covers it; its encryption key in no other node and its signature key in no other
    leaf. ``leaf_index`` may be ``leaf_count`` for a KeyPackage's leaf not yet added.
    The leaf_node_source the context demands is the caller's to check."""
    own_x = leaf_node_index(leaf_index)
    if any(
        node is not None and x != own_x and node.encryption_key == leaf.encryption_key
        for x, node in enumerate(tree.nodes)
    ):
        raise TreeError(f"leaf {leaf_index} repeats the encryption key of another node")
    others = [node for i, node in tree.members() if i != leaf_index]
    if any(node.signature_key == leaf.signature_key for node in others):
        raise TreeError(f"leaf {leaf_index} repeats the signature key of another leaf")
    verify_leaf_signature(leaf, leaf_index, group_id)
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


def check_unmerged_leaves(tree: RatchetTree) -> None:
    """§7.1 and §12.4.3.1: unmerged_leaves sorted, each a non-blank leaf below the
    node, and listed by every non-blank node between it and this one."""
    nodes = tree.nodes
    n = tree.leaf_count
    for p in range(1, len(nodes), 2):
        node = nodes[p]
        if not isinstance(node, ParentNode):
            continue
        leaves = list(node.unmerged_leaves)
        if leaves != sorted(set(leaves)):
            raise TreeError(f"parent node {p}: unmerged_leaves not strictly increasing")
        for leaf in leaves:
            x = leaf_node_index(leaf)
            if x >= len(nodes) or not in_subtree(p, x) or nodes[x] is None:
                raise TreeError(f"parent node {p}: unmerged leaf {leaf} is not a member below")
            for q in direct_path(x, n):
                if q == p:
                    break
                between = nodes[q]
                if isinstance(between, ParentNode) and leaf not in between.unmerged_leaves:
                    raise TreeError(f"parent node {q} does not list unmerged leaf {leaf}")


def check_unique_keys(tree: RatchetTree) -> None:
    """§7.3 / §12.4.3.1: an encryption key appears in one node only, a signature key
    in one leaf only (else the tree invariant or sender authentication breaks)."""
    encryption_keys: set[bytes] = set()
    for x, node in enumerate(tree.nodes):
        if node is None:
            continue
        if node.encryption_key in encryption_keys:
            raise TreeError(f"node {x} repeats an encryption key of another node")
        encryption_keys.add(node.encryption_key)
    signature_keys: set[bytes] = set()
    for index, leaf in tree.members():
        if leaf.signature_key in signature_keys:
            raise TreeError(f"leaf {index} repeats the signature key of another leaf")
        signature_keys.add(leaf.signature_key)


def verify_parent_hashes(tree: RatchetTree) -> None:
    """§7.9.2, "top down": every non-blank parent node must have exactly one
    descendant whose parent hash is valid with respect to it. Together this chains
    every parent node down to a leaf whose signature covers the chain, so no parent
    key was planted by someone outside the group (§12.4.3.1 asks this of joiners)."""
    hashes = tree.tree_hashes()
    nodes = tree.nodes
    for p in range(1, len(nodes), 2):
        if nodes[p] is not None and _parent_hash_links(tree, nodes, p, hashes) != 1:
            raise TreeError(f"parent node {p} is not parent-hash valid")


def _parent_hash_links(
    tree: RatchetTree, nodes: list[Node | None], p: int, hashes: list[bytes]
) -> int:
    """How many descendants D of ``p`` are parent-hash valid with respect to it
    (§7.9.2): D in the resolution of child C, D's parent_hash equal to the parent
    hash of ``p`` with copath child S, and ``p``'s unmerged leaves below C equal to
    C's resolution without D."""
    node = nodes[p]
    if not isinstance(node, ParentNode):
        raise TreeError(f"node {p} is not a non-blank parent node")
    removed = frozenset(node.unmerged_leaves)
    links = 0
    for c, s in ((left(p), right(p)), (right(p), left(p))):
        expected = parent_hash(node, original_sibling_hash(nodes, s, removed, hashes))
        unmerged_below = {
            leaf_node_index(leaf) for leaf in removed if in_subtree(c, leaf_node_index(leaf))
        }
        cover = tree.resolution(c)
        for d in cover:
            if stored_parent_hash(nodes[d]) == expected and set(cover) - {d} == unmerged_below:
                links += 1
    return links
