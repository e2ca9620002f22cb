"""What a joiner receives (RFC 9420 §8.1, §12.4.3): the group context, the GroupInfo,
the group secrets and the Welcome that carries them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

from bot.e2ee.codec import Reader, Writer
from bot.e2ee.messages.base import Struct, put
from bot.e2ee.messages.enums import ProtocolVersion, closed
from bot.e2ee.messages.leaf import Extension, get_extensions, put_extensions
from bot.e2ee.messages.proposals import HPKECiphertext, PreSharedKeyID


@dataclass(frozen=True)
class GroupContext(Struct):
    """§8.1: the state every key derivation and every member signature is bound to."""

    cipher_suite: int
    group_id: bytes
    epoch: int
    tree_hash: bytes
    confirmed_transcript_hash: bytes
    extensions: tuple[Extension, ...] = ()
    version: ProtocolVersion = ProtocolVersion.MLS10

    def encode(self, w: Writer) -> None:
        w.u16(self.version).u16(self.cipher_suite).opaque(self.group_id).u64(self.epoch)
        w.opaque(self.tree_hash).opaque(self.confirmed_transcript_hash)
        put_extensions(w, self.extensions)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        version = closed(ProtocolVersion, r.u16())
        cipher_suite = r.u16()
        group_id = r.opaque()
        epoch = r.u64()
        tree_hash = r.opaque()
        transcript = r.opaque()
        return cls(cipher_suite, group_id, epoch, tree_hash, transcript, get_extensions(r), version)


@dataclass(frozen=True)
class GroupInfo(Struct):
    """§12.4.3: the group's state for a joiner, signed by the committer (leaf ``signer``).
    Orange puts no ratchet_tree extension here: the tree travels beside the Welcome."""

    group_context: GroupContext
    extensions: tuple[Extension, ...]
    confirmation_tag: bytes
    signer: int
    signature: bytes = b""

    def _encode_content(self, w: Writer) -> None:
        self.group_context.encode(w)
        put_extensions(w, self.extensions)
        w.opaque(self.confirmation_tag).u32(self.signer)

    def tbs(self) -> bytes:
        """§12.4.3 GroupInfoTBS, signed with label "GroupInfoTBS"."""
        w = Writer()
        self._encode_content(w)
        return bytes(w)

    def encode(self, w: Writer) -> None:
        self._encode_content(w)
        w.opaque(self.signature)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        context = GroupContext.decode(r)
        extensions = get_extensions(r)
        tag = r.opaque()
        return cls(context, extensions, tag, r.u32(), r.opaque())


@dataclass(frozen=True)
class PathSecret(Struct):
    """§12.4.3: the path secret of the joiner's lowest common ancestor with the committer."""

    path_secret: bytes = field(repr=False)

    def encode(self, w: Writer) -> None:
        w.opaque(self.path_secret)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque())


@dataclass(frozen=True)
class GroupSecrets(Struct):
    """§12.4.3: what a Welcome encrypts to one joiner's init key. Secrets stay out of
    ``repr`` so a log line can never carry them."""

    joiner_secret: bytes = field(repr=False)
    path_secret: PathSecret | None = field(default=None, repr=False)
    psks: tuple[PreSharedKeyID, ...] = ()

    def encode(self, w: Writer) -> None:
        w.opaque(self.joiner_secret).optional(self.path_secret, put).vector(self.psks, put)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        joiner_secret = r.opaque()
        path_secret = r.optional(PathSecret.decode)
        return cls(joiner_secret, path_secret, tuple(r.vector(PreSharedKeyID.decode)))


@dataclass(frozen=True)
class EncryptedGroupSecrets(Struct):
    """§12.4.3: GroupSecrets sealed to the KeyPackage whose KeyPackageRef is
    ``new_member``."""

    new_member: bytes
    encrypted_group_secrets: HPKECiphertext

    def encode(self, w: Writer) -> None:
        w.opaque(self.new_member)
        self.encrypted_group_secrets.encode(w)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        return cls(r.opaque(), HPKECiphertext.decode(r))


@dataclass(frozen=True)
class Welcome(Struct):
    """§12.4.3: one EncryptedGroupSecrets per joiner and the GroupInfo encrypted under the
    welcome key. A Welcome with no entry for us is not ours (Orange ignores it too)."""

    cipher_suite: int
    secrets: tuple[EncryptedGroupSecrets, ...]
    encrypted_group_info: bytes

    def encode(self, w: Writer) -> None:
        w.u16(self.cipher_suite).vector(self.secrets, put).opaque(self.encrypted_group_info)

    @classmethod
    def decode(cls, r: Reader) -> Self:
        cipher_suite = r.u16()
        secrets = tuple(r.vector(EncryptedGroupSecrets.decode))
        return cls(cipher_suite, secrets, r.opaque())
