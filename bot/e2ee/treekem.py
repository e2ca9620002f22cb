"""TreeKEM of RFC 9420 (§7.4-7.6, §12.4): the ratchet tree's secrets side.

Deriving a path from a path secret (§7.4), decrypting the path secret of a received
UpdatePath (§7.5-7.6, §12.4.2), making an UpdatePath for our own Commit (§7.4-7.6,
§12.4.1) and deriving a joiner's keys from a Welcome's path secret (§12.4.3.1). What
comes out is a ``PathSecrets``: the commit_secret for the key schedule (§8) and the path
secrets and private keys of the nodes now known.

Separate from ``bot.e2ee.tree`` because the tree is public state shared by every member,
while everything here handles secrets: keeping them in one module keeps private keys out
of the tree object (they are passed in and returned as ``{node index: private key}``
maps, and ``PathSecrets`` hides its contents from ``repr``) and makes it easy to check
that no error message names a key or secret. The functions take the tree as their first
argument; ``RatchetTree.decrypt_path``, ``encrypt_path`` and ``welcome_path_secrets``
call them, and only ``RatchetTree`` changes its own nodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

from bot.e2ee import crypto
from bot.e2ee.messages import (
    HPKECiphertext,
    LeafNode,
    LeafNodeSource,
    UpdatePath,
    UpdatePathNode,
)
from bot.e2ee.treemath import in_subtree, leaf_node_index
from bot.e2ee.treevalidation import LEAF_NODE_LABEL, TreeError, verify_leaf_signature

if TYPE_CHECKING:
    from bot.e2ee.tree import RatchetTree

__all__ = [
    "UPDATE_PATH_LABEL",
    "PathSecrets",
    "decrypt_path",
    "encrypt_path",
    "welcome_path_secrets",
]

UPDATE_PATH_LABEL: Final = "UpdatePathNode"


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
    verify_leaf_signature(leaf, leaf_index, group_id)
    return leaf


def _check_ciphertext_counts(
    tree: RatchetTree, update_path: UpdatePath, sender: int, excluded: tuple[int, ...]
) -> list[tuple[int, int]]:
    """§7.6: one UpdatePathNode per filtered direct path node, each with one
    ciphertext per node of its copath child's resolution (new members excluded)."""
    path = tree.filtered_path(sender)
    if len(update_path.nodes) != len(path):
        raise TreeError(
            f"UpdatePath from leaf {sender} has {len(update_path.nodes)} nodes, its "
            f"filtered direct path {len(path)}"
        )
    for (p, c), node in zip(path, update_path.nodes, strict=True):
        if len(node.encrypted_path_secret) != len(tree.resolution(c, excluded)):
            raise TreeError(
                f"UpdatePath node {p}: {len(node.encrypted_path_secret)} ciphertexts for "
                f"a resolution of {len(tree.resolution(c, excluded))}"
            )
    return path


def _entry(tree: RatchetTree, path: list[tuple[int, int]], own_leaf: int, sender: int) -> int:
    """The position in ``sender``'s filtered direct path whose copath child is above
    ``own_leaf``: where a path secret for us enters (our common ancestor, §7.6)."""
    own_x = leaf_node_index(own_leaf)
    tree.leaf(own_leaf)  # range check
    start = next((i for i, (_, c) in enumerate(path) if in_subtree(c, own_x)), None)
    if start is None:
        raise TreeError(f"leaf {own_leaf} is under no copath node of leaf {sender}'s path")
    return start


def decrypt_path(
    tree: RatchetTree,
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
    path = _check_ciphertext_counts(tree, update_path, sender, excluded)
    start = _entry(tree, path, own_leaf, sender)
    copath_child = path[start][1]
    resolution = tree.resolution(copath_child, excluded)
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
    tree: RatchetTree, own_leaf: int, committer: int, path_secret: bytes
) -> PathSecrets:
    """§12.4.3.1, for a joiner whose GroupSecrets carry a ``path_secret``: it belongs
    to the lowest common ancestor of our leaf and the committer's (the GroupInfo's
    ``signer``), which is on the committer's filtered direct path; derive the path
    secrets and key pairs from there to the root. Each private key "MUST" match the
    public key in the tree, checked here. Call it on the tree of the new epoch."""
    if committer == own_leaf:
        raise TreeError("a Welcome's path secret cannot come from our own leaf")
    path = tree.filtered_path(committer)
    start = _entry(tree, path, own_leaf, committer)
    nodes = [p for p, _ in path[start:]]
    return _checked_path(nodes, path_secret, tree.encryption_keys(nodes))


def _seal_path(
    merged: RatchetTree,
    path: list[tuple[int, int]],
    secrets: list[bytes],
    pairs: list[tuple[bytes, bytes]],
    *,
    context: bytes,
    excluded: tuple[int, ...],
) -> list[UpdatePathNode]:
    """§7.6: each node's public key and its path secret HPKE-encrypted, under the
    provisional GroupContext, to every node of its copath child's resolution."""
    nodes = []
    for (_, c), secret, (_, public) in zip(path, secrets[:-1], pairs, strict=True):
        sealed = [
            HPKECiphertext(*crypto.encrypt_with_label(key, UPDATE_PATH_LABEL, context, secret))
            for key in merged.encryption_keys(merged.resolution(c, excluded))
        ]
        nodes.append(UpdatePathNode(public, tuple(sealed)))
    return nodes


def encrypt_path(
    tree: RatchetTree,
    own_leaf: int,
    signature_private_key: bytes,
    group_id: bytes,
    group_context: Callable[[bytes], bytes],
    *,
    excluded_leaves: Iterable[int] = (),
    leaf_template: LeafNode | None = None,
) -> tuple[RatchetTree, UpdatePath, PathSecrets]:
    """§7.4-7.6 / §12.4.1: a fresh UpdatePath for our own Commit and ``tree`` with it
    merged (a copy: ``RatchetTree.encrypt_path`` adopts it).

    Call it on the tree with the Commit's proposals applied. A fresh leaf key pair and
    random first path secret; the path's key pairs and parent hashes; our new leaf
    (``leaf_template`` or the current one, with source ``commit``, the new key and
    parent hash, re-signed with ``signature_private_key`` over group and position);
    then ``group_context(new tree hash)`` gives the serialized provisional GroupContext
    (it depends on the new tree, §12.4.1) under which each path secret is
    HPKE-encrypted to the resolution of its copath child, new members
    (``excluded_leaves``) left out: they get their path secret in the Welcome.
    Returns the merged tree, the UpdatePath and the PathSecrets (private keys include
    our new leaf's).
    """
    template = tree.leaf(own_leaf) if leaf_template is None else leaf_template
    if template is None:
        raise TreeError(f"leaf {own_leaf} is blank: it cannot commit")
    path = tree.filtered_path(own_leaf)
    leaf_private, leaf_public = crypto.generate_hpke_key()
    secrets, pairs = _derive_path(os.urandom(crypto.HASH_LEN), len(path))
    merged = tree.merged_path(
        own_leaf,
        [public for _, public in pairs],
        lambda parent_hash: _signed_commit_leaf(
            template,
            encryption_key=leaf_public,
            parent_hash=parent_hash,
            signature_private_key=signature_private_key,
            group_id=group_id,
            leaf_index=own_leaf,
        ),
    )
    leaf = merged.leaf(own_leaf)
    assert leaf is not None
    context = group_context(merged.tree_hash())
    excluded = tuple(excluded_leaves)
    nodes = _seal_path(merged, path, secrets, pairs, context=context, excluded=excluded)
    private_keys = {p: private for (p, _), (private, _) in zip(path, pairs, strict=True)}
    private_keys[leaf_node_index(own_leaf)] = leaf_private
    result = PathSecrets(
        commit_secret=secrets[-1],
        path_secrets={p: s for (p, _), s in zip(path, secrets[:-1], strict=True)},
        private_keys=private_keys,
    )
    return merged, UpdatePath(leaf, tuple(nodes)), result
