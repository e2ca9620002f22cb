"""Following another member's Commit (RFC 9420 §12.4.2) on a copy of the ratchet tree.

``apply_proposals`` applies the Commit's proposals, inline or by reference, in the order
of §12.3 (updates, removes, adds), checking each new leaf (§7.3); ``update_path`` applies
the committer's UpdatePath and decrypts the path secret meant for this member (§7.5,
§7.6) under the provisional GroupContext of §12.4.2. ``bot.e2ee.group`` derives the next
epoch from what they return and checks the confirmation tag before it moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from bot.e2ee import crypto
from bot.e2ee.messages import (
    Add,
    Commit,
    Extension,
    GroupContext,
    GroupContextExtensions,
    LeafNodeSource,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    Remove,
    Update,
)
from bot.e2ee.state import GroupError
from bot.e2ee.tree import RatchetTree, TreeError


@dataclass(frozen=True)
class Applied:
    """What a Commit's proposals did: the leaves added (excluded from the path), the
    pre-shared keys the new epoch mixes in, new GroupContext extensions if any; or
    ``removes_us`` (and nothing else is worked out: this member will hold no new keys)."""

    added: list[int]
    psk_ids: list[PreSharedKeyID]
    extensions: tuple[Extension, ...] | None
    removes_us: bool = False


def apply_proposals(
    tree: RatchetTree,
    commit: Commit,
    committer: int,
    *,
    pending: Mapping[bytes, tuple[int, Proposal]],
    own_leaf: int,
    group_id: bytes,
) -> Applied:
    """§12.3 on ``tree``: updates, then removes, then adds. ``pending`` holds the
    proposals received before the Commit, by ProposalRef, with their senders."""
    proposals: list[tuple[int, Proposal]] = []
    for item in commit.proposals:
        if isinstance(item.value, bytes):
            if item.value not in pending:
                raise GroupError("a Commit refers to a proposal this member never saw")
            proposals.append(pending[item.value])
        else:
            proposals.append((committer, item.value))
    try:
        for sender, proposal in proposals:
            if isinstance(proposal.body, Update):
                leaf = proposal.body.leaf_node
                if leaf.leaf_node_source is not LeafNodeSource.UPDATE:
                    raise GroupError("an Update proposal whose leaf is not of source update")
                tree.check_leaf(leaf, sender, group_id)
                tree.update_leaf(sender, leaf)
        for _, proposal in proposals:
            if isinstance(proposal.body, Remove):
                if proposal.body.removed == own_leaf:
                    return Applied([], [], None, removes_us=True)
                tree.remove_leaf(proposal.body.removed)
        added = []
        for _, proposal in proposals:
            if isinstance(proposal.body, Add):
                leaf = proposal.body.key_package.leaf_node
                tree.check_leaf(leaf, tree.leaf_count, group_id)
                added.append(tree.add_leaf(leaf))
    except TreeError as exc:
        raise GroupError(f"a Commit's proposals do not apply: {exc}") from None
    kinds = Add | Remove | Update | PreSharedKey | GroupContextExtensions
    unsupported = [p for _, p in proposals if not isinstance(p.body, kinds)]
    if unsupported:
        raise GroupError(f"a Commit with a {type(unsupported[0].body).__name__} proposal")
    psk_ids = [p.body.psk for _, p in proposals if isinstance(p.body, PreSharedKey)]
    extensions = [
        p.body.extensions for _, p in proposals if isinstance(p.body, GroupContextExtensions)
    ]
    return Applied(added, psk_ids, extensions[-1] if extensions else None)


def update_path(
    tree: RatchetTree,
    commit: Commit,
    committer: int,
    added: list[int],
    *,
    context: GroupContext,
    own_leaf: int,
    private_keys: Mapping[int, bytes],
) -> tuple[bytes, dict[int, bytes]]:
    """The commit secret (zeros without a path) and the private keys it brings;
    ``context`` is the GroupContext of the epoch the Commit was sent in."""
    if commit.path is None:
        return bytes(crypto.HASH_LEN), {}
    try:
        tree.apply_update_path(committer, commit.path, context.group_id)
        # §12.4.1: the new epoch and tree hash, but the old confirmed transcript hash
        # (the new one covers the Commit, which holds this path).
        provisional = replace(context, epoch=context.epoch + 1, tree_hash=tree.tree_hash())
        learned = tree.decrypt_path(
            commit.path,
            committer,
            own_leaf,
            private_keys,
            group_context=provisional.to_bytes(),
            excluded_leaves=added,
        )
    except TreeError as exc:
        raise GroupError(f"the Commit's UpdatePath does not apply: {exc}") from None
    return learned.commit_secret, dict(learned.private_keys)
