"""What the group modules share: the errors a member raises and one epoch's state.

``GroupError`` (a ``ValueError``) is the one error a member raises for a message it must
not or cannot process; ``decode_message`` makes a malformed ``MLSMessage`` (RFC 9420 §6)
one. ``Epoch`` holds one epoch's keys for opening messages (§8, §9) and the ratchet tree
that says who may sign them (§7); ``bot.e2ee.group`` keeps the current one and a few past.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.e2ee import schedule
from bot.e2ee.codec import DecodeError
from bot.e2ee.messages import GroupContext, MLSMessage
from bot.e2ee.tree import RatchetTree


class GroupError(ValueError):
    """A message this member must not (or cannot) process; the message says why."""


class WrongEpoch(GroupError):
    """A message of an epoch this member does not hold (Orange ignores these: every
    member sees the Commit that admitted it after its Welcome)."""


class NotForUs(GroupError):
    """A Welcome for somebody else: normal in a relay that broadcasts them."""


def decode_message(data: bytes, what: str) -> MLSMessage:
    """§6: the ``MLSMessage`` in ``data``, or ``GroupError`` naming ``what`` was malformed."""
    try:
        return MLSMessage.from_bytes(data)
    except DecodeError as exc:
        raise GroupError(f"malformed {what}: {exc}") from None


@dataclass(repr=False)
class Epoch:
    """One epoch's keys for opening messages, and the tree that says who signed them."""

    context: GroupContext
    context_bytes: bytes
    secrets: schedule.EpochSecrets
    secret_tree: schedule.SecretTree
    tree: RatchetTree

    @classmethod
    def start(
        cls, context: GroupContext, secrets: schedule.EpochSecrets, tree: RatchetTree
    ) -> Epoch:
        """The epoch's state with a fresh secret tree (§9) over its encryption secret."""
        secret_tree = schedule.SecretTree(secrets.encryption_secret, tree.leaf_count)
        return cls(context, context.to_bytes(), secrets, secret_tree, tree)

    def signature_key(self, leaf_index: int) -> bytes | None:
        if leaf_index >= self.tree.leaf_count:
            return None
        leaf = self.tree.leaf(leaf_index)
        return leaf.signature_key if leaf is not None else None
