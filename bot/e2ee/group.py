"""The recorder's membership in one MLS group (RFC 9420): join, follow epochs, open frames.

A ``Member`` makes the KeyPackage the call's committer adds; ``Group.join`` takes the
Welcome (and the ratchet tree, which Orange sends beside it, §12.4.3.1); ``Group.handle``
follows the group through each Commit (§12.4.2) and ``open_application`` opens media
frames (§6.3). Every check the RFC asks of a joiner and a receiver is made and fails with
``GroupError`` naming it; nothing is accepted "optimistically".

Frames of the previous epoch are still in flight when a Commit arrives (senders switch
epochs when they process it, not all at once), so the last ``KEPT_EPOCHS`` epochs' keys
stay for application messages only. State lives in memory only; the lock makes
``open_application`` (aiortc's decoder threads) and ``handle`` (the event loop) safe
together.

This module holds the state and its transitions; the work is done beside it:
``keypackage`` (``Member``, §10), ``joining`` (the Welcome, §12.4.3.1), ``following``
(others' Commits, §12.3, §12.4.2), ``committing`` (our own Commit and Welcome, §12.4.1,
§12.4.3) and ``state`` (the errors, one epoch's keys). Import all of it from here.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from bot.e2ee import crypto, schedule
from bot.e2ee.committing import Committed, build_commit
from bot.e2ee.following import apply_proposals, update_path
from bot.e2ee.joining import open_welcome, psk_secret
from bot.e2ee.keypackage import Member
from bot.e2ee.messages import (
    AuthenticatedContent,
    Commit,
    ContentType,
    GroupContext,
    PrivateMessage,
    Proposal,
    PublicMessage,
)
from bot.e2ee.protect import ProtectionError, unprotect_private, unprotect_public
from bot.e2ee.state import Epoch, GroupError, NotForUs, WrongEpoch, decode_message
from bot.e2ee.tree import RatchetTree

KEPT_EPOCHS: Final = 2
KEPT_RESUMPTION_PSKS: Final = 16
SAFETY_NUMBER_LENGTH: Final = 32


@dataclass(repr=False)
class Group:
    """This member's view of the group; see the module docstring."""

    own_leaf: int
    signature_private: bytes
    private_keys: dict[int, bytes]
    interim_transcript_hash: bytes
    current: Epoch
    _kept: OrderedDict[int, Epoch] = field(default_factory=OrderedDict)
    _proposals: dict[bytes, tuple[int, Proposal]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _psks: dict[bytes, bytes] = field(default_factory=dict)
    _resumption: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    """Recent epochs' resumption PSKs, which a Commit may mix into the next epoch."""
    removed: bool = False
    """True once a Commit removed this member: it can open nothing new."""

    def __repr__(self) -> str:
        return f"Group(epoch={self.epoch}, leaf={self.own_leaf})"

    @property
    def epoch(self) -> int:
        return self.current.context.epoch

    @property
    def group_id(self) -> bytes:
        return self.current.context.group_id

    @property
    def safety_number(self) -> bytes:
        """What every member's app shows (Orange: the epoch authenticator's first 32
        bytes): equal for all members exactly when they share the epoch's secrets."""
        return self.current.secrets.epoch_authenticator[:SAFETY_NUMBER_LENGTH]

    @property
    def members(self) -> list[bytes]:
        """The identities of the members, in leaf order."""
        return [leaf.credential.identity for _, leaf in self.current.tree.members()]

    def leaf_of(self, identity: bytes) -> int | None:
        """The leaf index of the member with this credential identity (the members list
        skips blank leaves, so its positions are not leaf indices)."""
        return next(
            (i for i, leaf in self.current.tree.members() if leaf.credential.identity == identity),
            None,
        )

    # -- joining -------------------------------------------------------------------------

    @classmethod
    def join(
        cls,
        member: Member,
        welcome: bytes,
        ratchet_tree: bytes | None = None,
        psks: Mapping[bytes, bytes] | None = None,
    ) -> Group:
        """§12.4.3.1: the group from a Welcome (``MLSMessage``) addressed to ``member``
        (``bot.e2ee.joining``).

        ``psks``: external pre-shared keys by id (Orange uses none; the RFC's vectors do).
        """
        psks = dict(psks or {})
        joined = open_welcome(member, welcome, ratchet_tree, psks)
        context = joined.info.group_context
        interim = schedule.interim_transcript_hash(
            context.confirmed_transcript_hash, joined.info.confirmation_tag
        )
        epoch = Epoch.start(context, joined.secrets, joined.tree)
        group = cls(joined.own_leaf, member.signature_private, joined.private_keys, interim, epoch)
        group._psks = psks
        return group

    # -- messages ------------------------------------------------------------------------

    def open_application(self, message: bytes) -> bytes:
        """The application data of a PrivateMessage of this epoch or a kept one (§6.3);
        ``GroupError`` (a ``ValueError``) if it is anything else or does not verify."""
        body = decode_message(message, "application message").body
        if not isinstance(body, PrivateMessage) or body.content_type != ContentType.APPLICATION:
            raise GroupError("not an application PrivateMessage")
        with self._lock:
            epoch = self._epoch_for(body.group_id, body.epoch)
            try:
                opened = unprotect_private(
                    body,
                    group_context=epoch.context,
                    sender_data_secret=epoch.secrets.sender_data_secret,
                    secret_tree=epoch.secret_tree,
                    signature_key=epoch.signature_key,
                )
            except ProtectionError as exc:
                raise GroupError(f"application message refused at {exc.step}") from None
        content = opened.content.content.content
        assert isinstance(content, bytes)
        return content

    def handle(self, message: bytes) -> bool:
        """Process a handshake message (a Proposal to keep, or a Commit to apply); True
        when it started a new epoch."""
        with self._lock:
            content = self._unprotect_handshake(decode_message(message, "handshake message").body)
            framed = content.content
            if framed.content_type == ContentType.PROPOSAL:
                proposal = framed.content
                assert isinstance(proposal, Proposal) and framed.sender.index is not None
                self._proposals[crypto.proposal_ref(content.to_bytes())] = (
                    framed.sender.index,
                    proposal,
                )
                return False
            if framed.content_type != ContentType.COMMIT:
                raise GroupError("an application message is not a handshake message")
            self._apply_commit(content)
            return True

    def _epoch_for(self, group_id: bytes, epoch: int) -> Epoch:
        if group_id != self.group_id:
            raise GroupError("a message of another group")
        if epoch == self.epoch:
            return self.current
        kept = self._kept.get(epoch)
        if kept is None:
            raise WrongEpoch(f"a message of epoch {epoch}; this member is at {self.epoch}")
        return kept

    def _unprotect_handshake(self, body: object) -> AuthenticatedContent:
        epoch = self.current
        try:
            if isinstance(body, PrivateMessage):
                self._epoch_for(body.group_id, body.epoch)
                if body.epoch != self.epoch:
                    raise WrongEpoch(f"a handshake message of old epoch {body.epoch}")
                # Opening uses up the sender's key for the generation before the content
                # is authenticated: open with a copy, so a forged or damaged copy of a
                # Commit cannot spend the key the genuine one needs (§9.2 deletes a key
                # once it decrypted a message, not after a failed attempt).
                trial = copy.deepcopy(epoch.secret_tree)
                opened = unprotect_private(
                    body,
                    group_context=epoch.context,
                    sender_data_secret=epoch.secrets.sender_data_secret,
                    secret_tree=trial,
                    signature_key=epoch.signature_key,
                )
                epoch.secret_tree = trial
                return opened.content
            if isinstance(body, PublicMessage):
                return unprotect_public(
                    body,
                    group_context=epoch.context,
                    membership_key=epoch.secrets.membership_key,
                    signature_key=epoch.signature_key,
                )
        except ProtectionError as exc:
            raise GroupError(f"handshake message refused at {exc.step}") from None
        raise GroupError("not a PublicMessage or PrivateMessage")

    # -- commits (§12.4.2) -----------------------------------------------------------------

    def _apply_commit(self, content: AuthenticatedContent) -> None:
        framed, epoch = content.content, self.current
        commit = framed.content
        assert isinstance(commit, Commit)
        committer = framed.sender.index
        if committer is None or committer == self.own_leaf:
            raise GroupError("a Commit not from another member")
        tree = epoch.tree.copy()
        applied = apply_proposals(
            tree,
            commit,
            committer,
            pending=self._proposals,
            own_leaf=self.own_leaf,
            group_id=self.group_id,
        )
        if applied.removes_us:
            self.removed = True
            return
        confirmed = schedule.confirmed_transcript_hash(
            self.interim_transcript_hash, content.confirmed_transcript_hash_input()
        )
        commit_secret, new_keys = update_path(
            tree,
            commit,
            committer,
            applied.added,
            context=epoch.context,
            own_leaf=self.own_leaf,
            private_keys=self.private_keys,
        )
        extensions = applied.extensions
        context = replace(
            epoch.context,
            epoch=epoch.context.epoch + 1,
            tree_hash=tree.tree_hash(),
            confirmed_transcript_hash=confirmed,
            extensions=epoch.context.extensions if extensions is None else extensions,
        )
        context_bytes = context.to_bytes()
        joiner = schedule.joiner_secret(epoch.secrets.init_secret, commit_secret, context_bytes)
        self._remember_resumption(epoch)
        psk = psk_secret(applied.psk_ids, self._psks, self._resumption, self.group_id)
        _, secrets = schedule.epoch_secrets(joiner, psk, context_bytes)
        tag = content.auth.confirmation_tag
        if tag is None or tag != schedule.confirmation_tag(secrets.confirmation_key, confirmed):
            raise GroupError("the Commit's confirmation tag does not match")
        self._enter(context, secrets, tree, tag, new_keys)

    def _enter(
        self,
        context: GroupContext,
        secrets: schedule.EpochSecrets,
        tree: RatchetTree,
        confirmation_tag: bytes,
        new_keys: Mapping[int, bytes],
    ) -> None:
        """Make the next epoch current; the one left stays for frames still in flight."""
        left = self.current
        self._kept[left.context.epoch] = left
        while len(self._kept) > KEPT_EPOCHS:
            self._kept.popitem(last=False)
        self.private_keys = {x: k for x, k in self.private_keys.items() if tree.node(x)}
        self.private_keys.update(new_keys)
        self.interim_transcript_hash = schedule.interim_transcript_hash(
            context.confirmed_transcript_hash, confirmation_tag
        )
        self.current = Epoch.start(context, secrets, tree)
        self._proposals.clear()

    def _remember_resumption(self, epoch: Epoch) -> None:
        self._resumption[epoch.context.epoch] = epoch.secrets.resumption_psk
        while len(self._resumption) > KEPT_RESUMPTION_PSKS:
            self._resumption.popitem(last=False)

    # -- our own commits (§12.4.1), when this member is the one to commit ------------------

    def commit(self, add: Sequence[bytes] = (), remove: Sequence[int] = ()) -> Committed:
        """Commit Removes of ``remove`` (leaf indices) and Adds of ``add`` (bare
        KeyPackages), always with an UpdatePath (as openmls does, so Orange accepts it),
        as a PrivateMessage; a Welcome for the new members (``bot.e2ee.committing``).
        Moves to the new epoch."""
        with self._lock:
            epoch = self.current
            own = build_commit(
                epoch,
                add,
                remove,
                own_leaf=self.own_leaf,
                signature_private=self.signature_private,
                interim_transcript_hash=self.interim_transcript_hash,
            )
            self._remember_resumption(epoch)
            self._enter(own.context, own.secrets, own.tree, own.confirmation_tag, own.private_keys)
            return own.sent


__all__ = ["Committed", "Group", "GroupError", "Member", "NotForUs", "WrongEpoch"]
