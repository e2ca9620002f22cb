"""KeyPackages (RFC 9420 §10): the recorder's own, and the ones it is asked to add.

``Member.create`` makes the KeyPackage the call's committer adds (§10, with a leaf of
source ``key_package``, §7.2) and keeps its private keys; ``checked_key_package`` makes
the checks of §10.1 on a KeyPackage before this member commits an Add of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Final

from bot.e2ee import crypto
from bot.e2ee.codec import DecodeError
from bot.e2ee.messages import (
    Capabilities,
    Credential,
    CredentialType,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
)
from bot.e2ee.state import GroupError
from bot.e2ee.tree import LEAF_NODE_LABEL

KEY_PACKAGE_LABEL: Final = "KeyPackageTBS"
KEY_PACKAGE_LIFETIME: Final = 28 * 24 * 3600
"""openmls refuses long lifetimes (Orange panics on such a KeyPackage): four weeks."""
KEY_PACKAGE_BACKDATE: Final = 3600
"""``not_before`` an hour back: openmls checks ``not_before < now`` strictly."""


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


def checked_key_package(data: bytes) -> KeyPackage:
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
