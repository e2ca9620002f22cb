"""This member's own Commit (RFC 9420 §12.4.1), when it is the one to commit.

``build_commit`` checks the KeyPackages to add (§10.1), applies Removes and Adds to a copy
of the tree, always with an UpdatePath (§7.4-7.6, as openmls does, so Orange accepts it),
frames and signs the Commit (§6.1), seals it as a PrivateMessage (§6.3), derives the next
epoch (§8) and its confirmation tag (§8.1), and for new members signs a GroupInfo and
seals a Welcome (§12.4.3). It changes no group state: ``bot.e2ee.group`` enters the
epoch it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from bot.e2ee import crypto, schedule
from bot.e2ee.joining import GROUP_INFO_LABEL, WELCOME_LABEL
from bot.e2ee.keypackage import checked_key_package
from bot.e2ee.messages import (
    Add,
    AuthenticatedContent,
    Commit,
    ConfirmedTranscriptHashInput,
    ContentType,
    EncryptedGroupSecrets,
    FramedContent,
    FramedContentAuthData,
    GroupContext,
    GroupInfo,
    GroupSecrets,
    HPKECiphertext,
    KeyPackage,
    MLSMessage,
    PathSecret,
    Proposal,
    ProposalOrRef,
    Remove,
    Sender,
    Welcome,
    WireFormat,
)
from bot.e2ee.protect import encrypt_private_message, sign_framed_content
from bot.e2ee.state import Epoch, GroupError
from bot.e2ee.tree import PathSecrets, RatchetTree, TreeError, in_subtree, level


@dataclass(frozen=True, repr=False)
class Committed:
    """What our Commit sends: the Commit for the group, a Welcome for the new members
    (None without Adds), and the new ratchet tree that travels beside the Welcome."""

    commit: bytes
    welcome: bytes | None
    ratchet_tree: bytes

    def __repr__(self) -> str:
        return f"Committed(welcome={self.welcome is not None})"


@dataclass(frozen=True, repr=False)
class OwnCommit:
    """Our Commit as it is sent, and the epoch it starts, for the group to enter."""

    sent: Committed
    context: GroupContext
    secrets: schedule.EpochSecrets
    tree: RatchetTree
    confirmation_tag: bytes
    private_keys: Mapping[int, bytes]

    def __repr__(self) -> str:
        return f"OwnCommit(epoch={self.context.epoch})"


def build_commit(
    epoch: Epoch,
    add: Sequence[bytes],
    remove: Sequence[int],
    *,
    own_leaf: int,
    signature_private: bytes,
    interim_transcript_hash: bytes,
) -> OwnCommit:
    """Removes of ``remove`` (leaf indices) and Adds of ``add`` (bare KeyPackages) with
    an UpdatePath, committed in ``epoch`` by the member at ``own_leaf``."""
    packages = [checked_key_package(data) for data in add]
    context = epoch.context
    tree = epoch.tree.copy()
    try:
        for leaf in remove:
            if leaf == own_leaf or tree.leaf(leaf) is None:
                raise GroupError(f"leaf {leaf} cannot be removed by this member")
            tree.remove_leaf(leaf)
        added = [tree.add_leaf(package.leaf_node) for package in packages]
        path, learned = tree.encrypt_path(
            own_leaf,
            signature_private,
            context.group_id,
            lambda tree_hash: replace(
                context, epoch=context.epoch + 1, tree_hash=tree_hash
            ).to_bytes(),
            excluded_leaves=added,
        )
    except TreeError as exc:
        raise GroupError(f"cannot commit: {exc}") from None
    proposals = [Proposal(Remove(leaf)) for leaf in remove]
    proposals += [Proposal(Add(package)) for package in packages]
    commit = Commit(tuple(ProposalOrRef(p) for p in proposals), path)
    return _seal(
        epoch,
        commit,
        tree,
        learned,
        list(zip(added, packages, strict=True)),
        own_leaf=own_leaf,
        signature_private=signature_private,
        interim_transcript_hash=interim_transcript_hash,
    )


def _seal(
    epoch: Epoch,
    commit: Commit,
    tree: RatchetTree,
    learned: PathSecrets,
    newcomers: list[tuple[int, KeyPackage]],
    *,
    own_leaf: int,
    signature_private: bytes,
    interim_transcript_hash: bytes,
) -> OwnCommit:
    """Frame, sign and seal the Commit; derive the epoch it starts; the Welcome."""
    framed = FramedContent(
        epoch.context.group_id,
        epoch.context.epoch,
        Sender.member(own_leaf),
        b"",
        ContentType.COMMIT,
        commit,
    )
    wire = WireFormat.PRIVATE_MESSAGE
    signature = sign_framed_content(framed, wire, epoch.context, signature_private)
    confirmed = schedule.confirmed_transcript_hash(
        interim_transcript_hash,
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
    welcome_secret, secrets = schedule.epoch_secrets(joiner, schedule.NO_PSK, context.to_bytes())
    tag = schedule.confirmation_tag(secrets.confirmation_key, confirmed)
    sealed = encrypt_private_message(
        AuthenticatedContent(wire, framed, FramedContentAuthData(signature, tag)),
        sender_data_secret=epoch.secrets.sender_data_secret,
        secret_tree=epoch.secret_tree,
    )
    welcome = None
    if newcomers:
        info = group_info(context, tag, own_leaf, signature_private)
        welcome = _welcome(info, joiner, welcome_secret, newcomers, learned)
    sent = Committed(MLSMessage(sealed).to_bytes(), welcome, tree.to_bytes())
    return OwnCommit(sent, context, secrets, tree, tag, learned.private_keys)


def group_info(
    context: GroupContext, confirmation_tag: bytes, signer: int, signature_private: bytes
) -> GroupInfo:
    """§12.4.3: signed by us; no ratchet_tree extension (Orange sends the tree beside)."""
    unsigned = GroupInfo(context, (), confirmation_tag, signer)
    signature = crypto.sign_with_label(signature_private, GROUP_INFO_LABEL, unsigned.tbs())
    return replace(unsigned, signature=signature)


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
