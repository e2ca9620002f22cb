"""Joining a group from a Welcome (RFC 9420 §12.4.3.1), every check made.

``open_welcome`` finds this member's entry by KeyPackageRef and HPKE-opens its group
secrets, derives the PSK secret (§8.4) and the welcome secret (§8), opens the GroupInfo,
takes the ratchet tree (beside the Welcome, as Orange sends it, or in the GroupInfo's
extension, §12.4.3.3), verifies the GroupInfo's signature and the tree (§7.9, §7.9.2),
finds our leaf, learns the path secrets above it, and checks the confirmation tag
against the epoch's secrets (§8.1). Anything wrong is a ``GroupError`` naming it.
``psk_secret`` serves Commits too (§12.4.2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from bot.e2ee import crypto, schedule
from bot.e2ee.codec import DecodeError
from bot.e2ee.keypackage import Member
from bot.e2ee.messages import (
    ExtensionType,
    GroupInfo,
    GroupSecrets,
    PreSharedKeyID,
    PSKType,
    Welcome,
)
from bot.e2ee.state import GroupError, NotForUs, decode_message
from bot.e2ee.tree import RatchetTree, TreeError

GROUP_INFO_LABEL: Final = "GroupInfoTBS"
WELCOME_LABEL: Final = "Welcome"


@dataclass(frozen=True, repr=False)
class Joined:
    """A Welcome, opened and checked: our leaf, the private keys we hold in the tree (by
    node index), the GroupInfo, the tree, and the first epoch's secrets."""

    own_leaf: int
    private_keys: dict[int, bytes]
    info: GroupInfo
    tree: RatchetTree
    secrets: schedule.EpochSecrets

    def __repr__(self) -> str:
        return f"Joined(epoch={self.info.group_context.epoch}, leaf={self.own_leaf})"


def open_welcome(
    member: Member, welcome: bytes, ratchet_tree: bytes | None, psks: Mapping[bytes, bytes]
) -> Joined:
    """§12.4.3.1: the group a Welcome (``MLSMessage``) addressed to ``member`` admits it
    to; ``NotForUs`` if it has no entry for ``member``."""
    body = decode_message(welcome, "Welcome").body
    if not isinstance(body, Welcome):
        raise GroupError("not a Welcome")
    if body.cipher_suite != crypto.CIPHER_SUITE:
        raise GroupError(f"Welcome for cipher suite {body.cipher_suite}, not 1")
    secrets = _group_secrets(member, body)
    psk = psk_secret(secrets.psks, psks)
    welcome_secret = schedule.welcome_secret(secrets.joiner_secret, psk)
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
    context = info.group_context
    _, epoch_secrets = schedule.epoch_secrets(secrets.joiner_secret, psk, context.to_bytes())
    expected = schedule.confirmation_tag(
        epoch_secrets.confirmation_key, context.confirmed_transcript_hash
    )
    if expected != info.confirmation_tag:
        raise GroupError("the GroupInfo's confirmation tag does not match: wrong secrets")
    return Joined(own_leaf, private_keys, info, tree, epoch_secrets)


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


def psk_secret(
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
