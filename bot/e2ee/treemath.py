"""Array-tree math of RFC 9420 (§4.1, Appendix C): node indices only, no node contents.

Leaf ``i`` sits at node ``2*i``, parents at odd indices, and a tree always has
``2^(d+1) - 1`` nodes, i.e. it is a full tree of ``2^d`` leaves (§7.7). These functions
map indices to indices (``level``, ``left``, ``right``, ``parent``, ``sibling``,
``root``, ``node_width``, ``direct_path``, ``copath``, ``in_subtree``,
``common_ancestor``) and raise ``ValueError`` on an index outside the tree.

Separate from ``bot.e2ee.tree`` because it is pure arithmetic with its own test vectors
(tree-math.json): it needs neither nodes nor crypto, and the ratchet tree, its hashes
(``bot.e2ee.treehash``), its checks (``bot.e2ee.treevalidation``) and TreeKEM
(``bot.e2ee.treekem``) all build on it.
"""

from __future__ import annotations

__all__ = [
    "check_node",
    "common_ancestor",
    "copath",
    "direct_path",
    "in_subtree",
    "leaf_node_index",
    "left",
    "level",
    "node_width",
    "parent",
    "right",
    "root",
    "sibling",
]


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


def check_node(x: int, n: int) -> None:
    """Raise ``ValueError`` unless ``x`` is a node of a tree of ``n`` leaves."""
    if not 0 <= x < node_width(n):
        raise ValueError(f"node {x} is not in a tree of {n} leaves")


def parent(x: int, n: int) -> int:
    """Appendix C: the parent of ``x`` in a (full, §7.7) tree of ``n`` leaves."""
    check_node(x, n)
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
    check_node(x, n)
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
    check_node(y, n)
    for candidate in [x, *direct_path(x, n)]:
        if in_subtree(candidate, y):
            return candidate
    raise ValueError(f"nodes {x} and {y} have no common ancestor")  # unreachable in one tree


def leaf_node_index(leaf: int) -> int:
    """The node index of leaf ``leaf`` (Appendix C: leaves at even indices)."""
    return 2 * leaf
