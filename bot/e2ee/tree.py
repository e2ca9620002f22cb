"""The ratchet tree of RFC 9420 (§4, §7): the public tree, its changes and its checks.

The tree is the group's membership and its key hierarchy at once, so it is where an
implementation is most easily wrong (the decision record, docs/e2ee-mls-choice.md §3, saw a
library fail exactly here) and where a mistake costs most: a Commit that openmls cannot
process panics every Orange Meets peer. Everything here follows the RFC's text closely and
every check raises ``TreeError``; nothing is skipped "optimistically".

``RatchetTree`` holds the nodes in the array representation of Appendix C and owns every
change to them: resolution and filtered direct path (§4.1.1-4.1.2), tree hash (§7.8), the
proposal operations (§12.1.1-12.1.3) and merging an UpdatePath (§7.5, §12.4.2). The rest
lives in:

- ``bot.e2ee.treemath``: index math (§4.1, Appendix C);
- ``bot.e2ee.treehash``: tree-hash and parent-hash inputs (§7.8, §7.9);
- ``bot.e2ee.treevalidation``: leaf validation (§7.3), parent-hash verification
  (§7.9.2) and the joiner's checks (§12.4.3.1), ``TreeError``;
- ``bot.e2ee.treekem``: TreeKEM's secrets (§7.4-7.6, §12.4), ``PathSecrets``.

Their public names are re-exported here, and their tree operations are methods of
``RatchetTree`` (``validate``, ``check_leaf``, ``decrypt_path``, ``encrypt_path``...).
Private keys never live in the tree object (it is public state, shared by every member):
they are passed in and returned as ``{node index: private key}`` maps. No error message
names a key or secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from bot.e2ee import treehash, treekem, treevalidation
from bot.e2ee.messages import (
    LeafNode,
    LeafNodeSource,
    Node,
    ParentNode,
    UpdatePath,
    decode_ratchet_tree,
    encode_ratchet_tree,
)
from bot.e2ee.treekem import UPDATE_PATH_LABEL, PathSecrets
from bot.e2ee.treemath import (
    check_node,
    common_ancestor,
    copath,
    direct_path,
    in_subtree,
    leaf_node_index,
    left,
    level,
    node_width,
    parent,
    right,
    root,
    sibling,
)
from bot.e2ee.treevalidation import LEAF_NODE_LABEL, TreeError

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
        check_node(x, self.leaf_count)
        return self._nodes[x]

    def leaf(self, leaf_index: int) -> LeafNode | None:
        """The LeafNode at ``leaf_index``, or ``None`` for a blank leaf."""
        if not 0 <= leaf_index < self.leaf_count:
            raise TreeError(f"leaf {leaf_index} is not in a tree of {self.leaf_count} leaves")
        node = self._nodes[leaf_node_index(leaf_index)]
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
        check_node(x, self.leaf_count)
        excluded = {leaf_node_index(leaf) for leaf in excluded_leaves}
        return [y for y in self._resolve(x) if y not in excluded]

    def _resolve(self, x: int) -> list[int]:
        node = self._nodes[x]
        if isinstance(node, ParentNode):
            return [x, *(leaf_node_index(leaf) for leaf in node.unmerged_leaves)]
        if node is not None:
            return [x]
        if level(x) == 0:
            return []
        return self._resolve(left(x)) + self._resolve(right(x))

    def _path_with_copath(self, leaf_index: int) -> list[tuple[int, int]]:
        """(direct path node, its child on the copath) for each node above the leaf."""
        x = leaf_node_index(leaf_index)
        path = direct_path(x, self.leaf_count)
        return [
            (p, sibling(c, self.leaf_count)) for p, c in zip(path, [x, *path[:-1]], strict=True)
        ]

    def filtered_direct_path(self, leaf_index: int) -> list[int]:
        """§4.1.2: the direct path without the nodes whose copath child has an empty
        resolution (a key there would only duplicate the child's): the nodes an
        UpdatePath carries, in order."""
        return [p for p, c in self.filtered_path(leaf_index)]

    def filtered_path(self, leaf_index: int) -> list[tuple[int, int]]:
        """The filtered direct path as (node, its copath child) pairs (§4.1.2, §7.6)."""
        self.leaf(leaf_index)  # range check
        return [(p, c) for p, c in self._path_with_copath(leaf_index) if self._resolve(c)]

    # --- tree hash (§7.8) ---

    def tree_hash(self) -> bytes:
        """§7.8: the root's tree hash, which the GroupContext carries so that the members
        agree on the whole tree."""
        return treehash.subtree_hash(self._nodes, root(self.leaf_count), frozenset(), {})

    def tree_hashes(self) -> list[bytes]:
        """§7.8: the tree hash of every node, in array order."""
        memo: dict[int, bytes] = {}
        treehash.subtree_hash(self._nodes, root(self.leaf_count), frozenset(), memo)
        return [memo[x] for x in range(len(self._nodes))]

    # --- validation (§7.3, §7.9.2, §12.4.3.1): the rules are in bot.e2ee.treevalidation ---

    validate = treevalidation.validate
    check_leaf = treevalidation.check_leaf
    verify_parent_hashes = treevalidation.verify_parent_hashes
    verify_leaf_signature = staticmethod(treevalidation.verify_leaf_signature)

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
        x = leaf_node_index(index)
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
        x = leaf_node_index(leaf_index)
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
        x = leaf_node_index(leaf_index)
        for p in direct_path(x, self.leaf_count):
            self._nodes[p] = None
        self._nodes[x] = leaf_node

    # --- UpdatePath merge (§7.5, §12.4.2) ---

    def _merge_path(self, sender: int, keys: list[bytes]) -> bytes:
        """§7.5 "merge UpdatePath into the tree": blank the sender's direct path, put the
        new keys (with no unmerged leaves) on its filtered direct path, and compute the
        parent hashes from the root down. Returns the parent hash the sender's new leaf
        must carry (empty when the filtered direct path is)."""
        path = self.filtered_path(sender)
        if len(keys) != len(path):
            raise TreeError(
                f"UpdatePath from leaf {sender} has {len(keys)} nodes, its filtered direct "
                f"path {len(path)}"
            )
        for p in direct_path(leaf_node_index(sender), self.leaf_count):
            self._nodes[p] = None
        for (p, _), key in zip(path, keys, strict=True):
            self._nodes[p] = ParentNode(key, b"", ())
        parent_hash = b""
        for p, c in reversed(path):
            node = replace(self._parent_at(p), parent_hash=parent_hash)
            self._nodes[p] = node
            sibling_hash = treehash.subtree_hash(self._nodes, c, frozenset(), {})
            parent_hash = treehash.parent_hash(node, sibling_hash)
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

        def checked_leaf(expected: bytes) -> LeafNode:
            if leaf.parent_hash != expected:
                raise TreeError(f"UpdatePath from leaf {sender}: its leaf's parent_hash is wrong")
            return leaf

        merged = self.merged_path(sender, keys, checked_leaf)
        merged.check_leaf(leaf, sender, group_id)
        self._nodes = merged._nodes

    def merged_path(
        self, sender: int, keys: list[bytes], new_leaf: Callable[[bytes], LeafNode]
    ) -> RatchetTree:
        """A copy of this tree with ``keys`` merged on ``sender``'s filtered direct path
        (§7.5) and ``new_leaf(parent hash it must carry)`` as ``sender``'s leaf; this tree
        is unchanged. For ``apply_update_path`` and ``treekem.encrypt_path``."""
        merged = self.copy()
        parent_hash = merged._merge_path(sender, keys)
        merged._nodes[leaf_node_index(sender)] = new_leaf(parent_hash)
        return merged

    # --- TreeKEM (§7.4-7.6, §12.4): the secrets side is in bot.e2ee.treekem ---

    decrypt_path = treekem.decrypt_path
    welcome_path_secrets = treekem.welcome_path_secrets

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
        """§7.4-7.6 / §12.4.1: a fresh UpdatePath for our own Commit, merged into this
        tree (see ``treekem.encrypt_path``). Returns the UpdatePath and the PathSecrets."""
        merged, update_path, secrets = treekem.encrypt_path(
            self,
            own_leaf,
            signature_private_key,
            group_id,
            group_context,
            excluded_leaves=excluded_leaves,
            leaf_template=leaf_template,
        )
        self._nodes = merged._nodes
        return update_path, secrets

    def encryption_keys(self, xs: list[int]) -> list[bytes]:
        """The encryption keys of nodes ``xs``, which must not be blank."""
        keys = []
        for x in xs:
            node = self._nodes[x]
            if node is None:
                raise TreeError(f"node {x} is blank and has no encryption key")
            keys.append(node.encryption_key)
        return keys
