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
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from bot.e2ee import crypto, schedule
from bot.e2ee.codec import DecodeError
from bot.e2ee.messages import (
    Add,
    AuthenticatedContent,
    Capabilities,
    Commit,
    ConfirmedTranscriptHashInput,
    ContentType,
    Credential,
    CredentialType,
    EncryptedGroupSecrets,
    Extension,
    ExtensionType,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    GroupContextExtensions,
    GroupInfo,
    GroupSecrets,
    HPKECiphertext,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    MLSMessage,
    PathSecret,
    PreSharedKey,
    PreSharedKeyID,
    PrivateMessage,
    Proposal,
    ProposalOrRef,
    PSKType,
    PublicMessage,
    Remove,
    Sender,
    Update,
    Welcome,
    WireFormat,
)
from bot.e2ee.protect import (
    ProtectionError,
    encrypt_private_message,
    sign_framed_content,
    unprotect_private,
    unprotect_public,
)
from bot.e2ee.tree import LEAF_NODE_LABEL, PathSecrets, RatchetTree, TreeError, in_subtree, level

KEY_PACKAGE_LABEL: Final = "KeyPackageTBS"
GROUP_INFO_LABEL: Final = "GroupInfoTBS"
WELCOME_LABEL: Final = "Welcome"
KEY_PACKAGE_LIFETIME: Final = 28 * 24 * 3600
"""openmls refuses long lifetimes (Orange panics on such a KeyPackage): four weeks."""
KEY_PACKAGE_BACKDATE: Final = 3600
"""``not_before`` an hour back: openmls checks ``not_before < now`` strictly."""
KEPT_EPOCHS: Final = 2
KEPT_RESUMPTION_PSKS: Final = 16
SAFETY_NUMBER_LENGTH: Final = 32


class GroupError(ValueError):
    """A message this member must not (or cannot) process; the message says why."""


class NotForUs(GroupError):
    """A Welcome for somebody else: normal in a relay that broadcasts them."""


@dataclass(frozen=True, repr=False)
class Member:
    """A would-be member's KeyPackage and the private keys behind it (never logged)."""

    key_package: KeyPackage
    init_private: bytes
    encryption_private: bytes
    signature_private: bytes

    def __repr__(self) -> str:
        return f"Member(identity={self.identity!r})"

    @property
    def identity(self) -> bytes:
        return self.key_package.leaf_node.credential.identity

    @classmethod
    def create(cls, identity: bytes, now: int | None = None) -> Member:
        """A fresh KeyPackage for ``identity`` (the id the call's room knows us by)."""
        now = int(time.time()) if now is None else now
        signature_private, signature_public = crypto.generate_signature_key()
        encryption_private, encryption_public = crypto.generate_hpke_key()
        init_private, init_public = crypto.generate_hpke_key()
        leaf = LeafNode(
            encryption_key=encryption_public,
            signature_key=signature_public,
            credential=Credential(CredentialType.BASIC, identity),
            capabilities=Capabilities(),
            leaf_node_source=LeafNodeSource.KEY_PACKAGE,
            lifetime=Lifetime(now - KEY_PACKAGE_BACKDATE, now + KEY_PACKAGE_LIFETIME),
        )
        signed = _signed_leaf(leaf, signature_private)
        unsigned = KeyPackage(crypto.CIPHER_SUITE, init_public, signed)
        signature = crypto.sign_with_label(signature_private, KEY_PACKAGE_LABEL, unsigned.tbs())
        package = replace(unsigned, signature=signature)
        return cls(package, init_private, encryption_private, signature_private)


def _signed_leaf(leaf: LeafNode, signature_private: bytes) -> LeafNode:
    signature = crypto.sign_with_label(signature_private, LEAF_NODE_LABEL, leaf.tbs(None, None))
    return replace(leaf, signature=signature)


@dataclass(repr=False)
class _Epoch:
    """One epoch's keys for opening messages, and the tree that says who signed them."""

    context: GroupContext
    context_bytes: bytes
    secrets: schedule.EpochSecrets
    secret_tree: schedule.SecretTree
    tree: RatchetTree

    def signature_key(self, leaf_index: int) -> bytes | None:
        if leaf_index >= self.tree.leaf_count:
            return None
        leaf = self.tree.leaf(leaf_index)
        return leaf.signature_key if leaf is not None else None


@dataclass(repr=False)
class Group:
    """This member's view of the group; see the module docstring."""

    own_leaf: int
    signature_private: bytes
    private_keys: dict[int, bytes]
    interim_transcript_hash: bytes
    current: _Epoch
    _kept: OrderedDict[int, _Epoch] = field(default_factory=OrderedDict)
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

    # -- joining -------------------------------------------------------------------------

    @classmethod
    def join(
        cls,
        member: Member,
        welcome: bytes,
        ratchet_tree: bytes | None = None,
        psks: Mapping[bytes, bytes] | None = None,
    ) -> Group:
        """§12.4.3.1: the group from a Welcome (``MLSMessage``) addressed to ``member``.

        ``psks``: external pre-shared keys by id (Orange uses none; the RFC's vectors do).
        """
        psks = dict(psks or {})
        body = _decode(welcome, "Welcome").body
        if not isinstance(body, Welcome):
            raise GroupError("not a Welcome")
        if body.cipher_suite != crypto.CIPHER_SUITE:
            raise GroupError(f"Welcome for cipher suite {body.cipher_suite}, not 1")
        secrets = _group_secrets(member, body)
        psk_secret = _psk_secret(secrets.psks, psks)
        welcome_secret = schedule.welcome_secret(secrets.joiner_secret, psk_secret)
        key, nonce = schedule.welcome_key_nonce(welcome_secret)
        try:
            plain = crypto.open_(key, nonce, b"", body.encrypted_group_info)
            info = GroupInfo.from_bytes(plain)
        except (crypto.CryptoError, DecodeError) as exc:
            raise GroupError(f"the Welcome's GroupInfo cannot be opened: {exc}") from None
        tree = _joining_tree(info, ratchet_tree)
        _check_group_info(info, tree)
        own_leaf = tree.index_of(member.key_package.leaf_node)
        if own_leaf is None:
            raise GroupError("the Welcome's tree does not hold our KeyPackage's leaf")
        private_keys = {2 * own_leaf: member.encryption_private}
        if secrets.path_secret is not None:
            try:
                learned = tree.welcome_path_secrets(
                    own_leaf, info.signer, secrets.path_secret.path_secret
                )
            except TreeError as exc:
                raise GroupError(f"the Welcome's path secret is not valid: {exc}") from None
            private_keys.update(learned.private_keys)
        context_bytes = info.group_context.to_bytes()
        _, epoch_secrets = schedule.epoch_secrets(secrets.joiner_secret, psk_secret, context_bytes)
        group = cls._start(member, own_leaf, private_keys, info, tree, secrets=epoch_secrets)
        group._psks = psks
        return group

    @classmethod
    def _start(
        cls,
        member: Member,
        own_leaf: int,
        private_keys: dict[int, bytes],
        info: GroupInfo,
        tree: RatchetTree,
        *,
        secrets: schedule.EpochSecrets,
    ) -> Group:
        context = info.group_context
        expected = schedule.confirmation_tag(
            secrets.confirmation_key, context.confirmed_transcript_hash
        )
        if expected != info.confirmation_tag:
            raise GroupError("the GroupInfo's confirmation tag does not match: wrong secrets")
        epoch = _Epoch(
            context,
            context.to_bytes(),
            secrets,
            schedule.SecretTree(secrets.encryption_secret, tree.leaf_count),
            tree,
        )
        interim = schedule.interim_transcript_hash(
            context.confirmed_transcript_hash, info.confirmation_tag
        )
        return cls(own_leaf, member.signature_private, private_keys, interim, epoch)

    # -- messages ------------------------------------------------------------------------

    def open_application(self, message: bytes) -> bytes:
        """The application data of a PrivateMessage of this epoch or a kept one (§6.3);
        ``GroupError`` (a ``ValueError``) if it is anything else or does not verify."""
        body = _decode(message, "application message").body
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
            content = self._unprotect_handshake(_decode(message, "handshake message").body)
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

    def _epoch_for(self, group_id: bytes, epoch: int) -> _Epoch:
        if group_id != self.group_id:
            raise GroupError("a message of another group")
        if epoch == self.epoch:
            return self.current
        kept = self._kept.get(epoch)
        if kept is None:
            raise GroupError(f"a message of epoch {epoch}; this member is at {self.epoch}")
        return kept

    def _unprotect_handshake(self, body: object) -> AuthenticatedContent:
        epoch = self.current
        try:
            if isinstance(body, PrivateMessage):
                self._epoch_for(body.group_id, body.epoch)
                if body.epoch != self.epoch:
                    raise GroupError(f"a handshake message of old epoch {body.epoch}")
                return unprotect_private(
                    body,
                    group_context=epoch.context,
                    sender_data_secret=epoch.secrets.sender_data_secret,
                    secret_tree=epoch.secret_tree,
                    signature_key=epoch.signature_key,
                ).content
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
        added, psk_ids, extensions = self._apply_proposals(tree, commit, committer)
        if self.removed:
            return
        confirmed = schedule.confirmed_transcript_hash(
            self.interim_transcript_hash, content.confirmed_transcript_hash_input()
        )
        commit_secret, new_keys = self._update_path(tree, commit, committer, added)
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
        psk_secret = _psk_secret(psk_ids, self._psks, self._resumption, self.group_id)
        _, secrets = schedule.epoch_secrets(joiner, psk_secret, context_bytes)
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
        secret_tree = schedule.SecretTree(secrets.encryption_secret, tree.leaf_count)
        self.current = _Epoch(context, context.to_bytes(), secrets, secret_tree, tree)
        self._proposals.clear()

    # -- our own commits (§12.4.1), when this member is the one to commit ------------------

    def commit(self, add: Sequence[bytes] = (), remove: Sequence[int] = ()) -> Committed:
        """Commit Removes of ``remove`` (leaf indices) and Adds of ``add`` (bare
        KeyPackages), always with an UpdatePath (as openmls does, so Orange accepts it),
        as a PrivateMessage; a Welcome for the new members. Moves to the new epoch."""
        with self._lock:
            epoch = self.current
            packages = [_checked_key_package(data) for data in add]
            tree = epoch.tree.copy()
            try:
                for leaf in remove:
                    if leaf == self.own_leaf or tree.leaf(leaf) is None:
                        raise GroupError(f"leaf {leaf} cannot be removed by this member")
                    tree.remove_leaf(leaf)
                added = [tree.add_leaf(package.leaf_node) for package in packages]
                path, learned = tree.encrypt_path(
                    self.own_leaf,
                    self.signature_private,
                    self.group_id,
                    lambda tree_hash: replace(
                        epoch.context, epoch=self.epoch + 1, tree_hash=tree_hash
                    ).to_bytes(),
                    excluded_leaves=added,
                )
            except TreeError as exc:
                raise GroupError(f"cannot commit: {exc}") from None
            proposals = [Proposal(Remove(leaf)) for leaf in remove]
            proposals += [Proposal(Add(package)) for package in packages]
            commit = Commit(tuple(ProposalOrRef(p) for p in proposals), path)
            return self._send_commit(commit, tree, learned, list(zip(added, packages, strict=True)))

    def _send_commit(
        self,
        commit: Commit,
        tree: RatchetTree,
        learned: PathSecrets,
        newcomers: list[tuple[int, KeyPackage]],
    ) -> Committed:
        epoch = self.current
        framed = FramedContent(
            self.group_id,
            epoch.context.epoch,
            Sender.member(self.own_leaf),
            b"",
            ContentType.COMMIT,
            commit,
        )
        wire = WireFormat.PRIVATE_MESSAGE
        signature = sign_framed_content(framed, wire, epoch.context, self.signature_private)
        confirmed = schedule.confirmed_transcript_hash(
            self.interim_transcript_hash,
            ConfirmedTranscriptHashInput(wire, framed, signature).to_bytes(),
        )
        context = replace(
            epoch.context,
            epoch=epoch.context.epoch + 1,
            tree_hash=tree.tree_hash(),
            confirmed_transcript_hash=confirmed,
        )
        joiner = schedule.joiner_secret(
            epoch.secrets.init_secret, learned.commit_secret, context.to_bytes()
        )
        welcome_secret, secrets = schedule.epoch_secrets(
            joiner, schedule.NO_PSK, context.to_bytes()
        )
        tag = schedule.confirmation_tag(secrets.confirmation_key, confirmed)
        sealed = encrypt_private_message(
            AuthenticatedContent(wire, framed, FramedContentAuthData(signature, tag)),
            sender_data_secret=epoch.secrets.sender_data_secret,
            secret_tree=epoch.secret_tree,
        )
        welcome = None
        if newcomers:
            info = self._group_info(context, tag)
            welcome = _welcome(info, joiner, welcome_secret, newcomers, learned)
        self._remember_resumption(epoch)
        self._enter(context, secrets, tree, tag, learned.private_keys)
        return Committed(MLSMessage(sealed).to_bytes(), welcome, tree.to_bytes())

    def _group_info(self, context: GroupContext, confirmation_tag: bytes) -> GroupInfo:
        """§12.4.3: signed by us; no ratchet_tree extension (Orange sends the tree beside)."""
        unsigned = GroupInfo(context, (), confirmation_tag, self.own_leaf)
        signature = crypto.sign_with_label(self.signature_private, GROUP_INFO_LABEL, unsigned.tbs())
        return replace(unsigned, signature=signature)

    def _remember_resumption(self, epoch: _Epoch) -> None:
        self._resumption[epoch.context.epoch] = epoch.secrets.resumption_psk
        while len(self._resumption) > KEPT_RESUMPTION_PSKS:
            self._resumption.popitem(last=False)

    def _apply_proposals(
        self, tree: RatchetTree, commit: Commit, committer: int
    ) -> tuple[list[int], list[PreSharedKeyID], tuple[Extension, ...] | None]:
        """§12.3: updates, then removes, then adds; the leaves added (for the path), the
        pre-shared keys the new epoch mixes in, and new GroupContext extensions if any."""
        proposals: list[tuple[int, Proposal]] = []
        for item in commit.proposals:
            if isinstance(item.value, bytes):
                if item.value not in self._proposals:
                    raise GroupError("a Commit refers to a proposal this member never saw")
                proposals.append(self._proposals[item.value])
            else:
                proposals.append((committer, item.value))
        group_id = self.group_id
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
                    if proposal.body.removed == self.own_leaf:
                        self.removed = True
                        return [], [], None
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
        return added, psk_ids, extensions[-1] if extensions else None

    def _update_path(
        self,
        tree: RatchetTree,
        commit: Commit,
        committer: int,
        added: list[int],
    ) -> tuple[bytes, dict[int, bytes]]:
        """The commit secret (zeros without a path) and the private keys it brings."""
        if commit.path is None:
            return bytes(crypto.HASH_LEN), {}
        try:
            tree.apply_update_path(committer, commit.path, self.group_id)
            # §12.4.1: the new epoch and tree hash, but the old confirmed transcript hash
            # (the new one covers the Commit, which holds this path).
            provisional = replace(
                self.current.context, epoch=self.epoch + 1, tree_hash=tree.tree_hash()
            )
            learned = tree.decrypt_path(
                commit.path,
                committer,
                self.own_leaf,
                self.private_keys,
                group_context=provisional.to_bytes(),
                excluded_leaves=added,
            )
        except TreeError as exc:
            raise GroupError(f"the Commit's UpdatePath does not apply: {exc}") from None
        return learned.commit_secret, dict(learned.private_keys)


@dataclass(frozen=True, repr=False)
class Committed:
    """What our Commit sends: the Commit for the group, a Welcome for the new members
    (None without Adds), and the new ratchet tree that travels beside the Welcome."""

    commit: bytes
    welcome: bytes | None
    ratchet_tree: bytes

    def __repr__(self) -> str:
        return f"Committed(welcome={self.welcome is not None})"


def _checked_key_package(data: bytes) -> KeyPackage:
    """§10.1: a KeyPackage we may add: our suite, distinct keys, its signature."""
    try:
        package = KeyPackage.from_bytes(data)
    except DecodeError as exc:
        raise GroupError(f"malformed KeyPackage: {exc}") from None
    leaf = package.leaf_node
    if package.cipher_suite != crypto.CIPHER_SUITE:
        raise GroupError(f"a KeyPackage of cipher suite {package.cipher_suite}, not 1")
    if package.init_key == leaf.encryption_key:
        raise GroupError("a KeyPackage whose init and encryption keys are the same")
    if leaf.leaf_node_source is not LeafNodeSource.KEY_PACKAGE or not crypto.verify_with_label(
        leaf.signature_key, KEY_PACKAGE_LABEL, package.tbs(), package.signature
    ):
        raise GroupError("a KeyPackage whose signature does not verify")
    return package


def _welcome(
    info: GroupInfo,
    joiner_secret: bytes,
    welcome_secret: bytes,
    newcomers: list[tuple[int, KeyPackage]],
    learned: PathSecrets,
) -> bytes:
    """§12.4.3: the GroupInfo sealed under the welcome secret and, for each new member,
    the joiner secret and the path secret of the lowest node of our path above them,
    HPKE-sealed to their init key."""
    key, nonce = schedule.welcome_key_nonce(welcome_secret)
    encrypted_info = crypto.seal(key, nonce, b"", info.to_bytes())
    entries = []
    for leaf, package in newcomers:
        above = [x for x in learned.path_secrets if in_subtree(x, 2 * leaf)]
        path_secret = learned.path_secrets[min(above, key=level)] if above else None
        secrets = GroupSecrets(
            joiner_secret, PathSecret(path_secret) if path_secret is not None else None
        )
        kem_output, ciphertext = crypto.encrypt_with_label(
            package.init_key, WELCOME_LABEL, encrypted_info, secrets.to_bytes()
        )
        entries.append(
            EncryptedGroupSecrets(
                crypto.key_package_ref(package.to_bytes()), HPKECiphertext(kem_output, ciphertext)
            )
        )
    return MLSMessage(Welcome(crypto.CIPHER_SUITE, tuple(entries), encrypted_info)).to_bytes()


def _decode(data: bytes, what: str) -> MLSMessage:
    try:
        return MLSMessage.from_bytes(data)
    except DecodeError as exc:
        raise GroupError(f"malformed {what}: {exc}") from None


def _group_secrets(member: Member, welcome: Welcome) -> GroupSecrets:
    """§12.4.3.1: find our entry by KeyPackageRef and HPKE-open it with the init key."""
    ref = crypto.key_package_ref(member.key_package.to_bytes())
    entry = next((s for s in welcome.secrets if s.new_member == ref), None)
    if entry is None:
        raise NotForUs("the Welcome has no entry for our KeyPackage")
    sealed = entry.encrypted_group_secrets
    try:
        plain = crypto.decrypt_with_label(
            member.init_private,
            WELCOME_LABEL,
            welcome.encrypted_group_info,
            sealed.kem_output,
            sealed.ciphertext,
        )
        secrets = GroupSecrets.from_bytes(plain)
    except (crypto.CryptoError, DecodeError) as exc:
        raise GroupError(f"the Welcome's group secrets cannot be opened: {exc}") from None
    return secrets


def _psk_secret(
    ids: Sequence[PreSharedKeyID],
    psks: Mapping[bytes, bytes],
    resumption: Mapping[int, bytes] | None = None,
    group_id: bytes = b"",
) -> bytes:
    """§8.4 over the PSKs a Welcome or Commit names: external ones this member holds, and
    this group's resumption PSKs of epochs it still remembers."""
    pairs = []
    for psk in ids:
        if psk.psktype is PSKType.EXTERNAL:
            key = psks.get(psk.psk_id)
        elif psk.psk_group_id == group_id and resumption is not None:
            key = resumption.get(psk.psk_epoch)
        else:
            key = None
        if key is None:
            raise GroupError("pre-shared keys are needed that this member does not hold")
        pairs.append((psk.to_bytes(), key))
    return schedule.psk_secret(pairs)


def _joining_tree(info: GroupInfo, ratchet_tree: bytes | None) -> RatchetTree:
    """The tree given beside the Welcome (Orange), else the GroupInfo's extension."""
    if ratchet_tree is None:
        extension = next(
            (e for e in info.extensions if e.extension_type == ExtensionType.RATCHET_TREE), None
        )
        if extension is None:
            raise GroupError("no ratchet tree: neither beside the Welcome nor in its GroupInfo")
        ratchet_tree = extension.extension_data
    try:
        return RatchetTree.from_bytes(ratchet_tree)
    except (DecodeError, TreeError) as exc:
        raise GroupError(f"malformed ratchet tree: {exc}") from None


def _check_group_info(info: GroupInfo, tree: RatchetTree) -> None:
    """The GroupInfo's signature by its signer's leaf, then the tree (§12.4.3.1)."""
    context = info.group_context
    if context.cipher_suite != crypto.CIPHER_SUITE:
        raise GroupError(f"a group of cipher suite {context.cipher_suite}, not 1")
    signer = tree.leaf(info.signer) if info.signer < tree.leaf_count else None
    if signer is None:
        raise GroupError(f"the GroupInfo's signer {info.signer} is not a member")
    if not crypto.verify_with_label(
        signer.signature_key, GROUP_INFO_LABEL, info.tbs(), info.signature
    ):
        raise GroupError("the GroupInfo's signature does not verify")
    try:
        tree.validate(context.group_id, tree_hash=context.tree_hash)
    except TreeError as exc:
        raise GroupError(f"the Welcome's tree is not valid: {exc}") from None


__all__ = ["Committed", "Group", "GroupError", "Member", "NotForUs"]
