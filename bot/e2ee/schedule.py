"""The MLS key schedule, transcript hashes and secret tree (RFC 9420 §8, §8.2, §9).

Everything a member derives from an epoch's secrets lives here: the joiner and welcome
secrets of a Welcome, the per-epoch secrets (sender data, encryption, exporter,
confirmation, membership, resumption, epoch authenticator, next init secret), the
transcript hashes and confirmation tag a Commit is checked against, and the secret tree
whose hash ratchets give each sender's handshake and application keys.

Secrets are deleted as soon as RFC 9420 §9.2 allows (a parent's secret once its children
exist, a ratchet secret once the next generation exists, a key once it has been used).
Python cannot wipe immutable ``bytes``; "deleted" here means no reference is kept, which
is what lets the garbage collector reclaim it. No secret is ever part of a ``repr`` or
of an exception message.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Final

from bot.e2ee.codec import Writer
from bot.e2ee.crypto import (
    AEAD_KEY_LEN,
    AEAD_NONCE_LEN,
    HASH_LEN,
    CryptoError,
    derive_secret,
    derive_tree_secret,
    expand_with_label,
    extract,
    hash_,
)

OUT_OF_ORDER_TOLERANCE: Final = 500
"""Past generations whose keys a receiving ratchet keeps (Orange's openmls configuration)."""
MAX_FORWARD_DISTANCE: Final = 1000
"""How far past the next expected generation a receiver may jump (Orange's openmls setting)."""
MAX_GENERATION: Final = (1 << 32) - 2
"""The last generation a ratchet yields: generations are uint32 and openmls stops one short."""
NO_PSK: Final = bytes(HASH_LEN)
"""psk_secret when a Commit or Welcome carries no PSK: KDF.Nh zero bytes (RFC 9420 §8.4)."""
REUSE_GUARD_LEN: Final = 4


class RatchetError(CryptoError):
    """No key for that generation: already used, too old, too far ahead, or the ratchet is spent."""


@dataclass(frozen=True)
class EpochSecrets:
    """The secrets derived from one epoch_secret (RFC 9420 §8, table in §8 "epoch_secret").

    Every field is kept out of ``repr`` so logging the object can never leak key material.
    """

    sender_data_secret: bytes = field(repr=False)
    encryption_secret: bytes = field(repr=False)
    exporter_secret: bytes = field(repr=False)
    external_secret: bytes = field(repr=False)
    confirmation_key: bytes = field(repr=False)
    membership_key: bytes = field(repr=False)
    resumption_psk: bytes = field(repr=False)
    epoch_authenticator: bytes = field(repr=False)
    init_secret: bytes = field(repr=False)


# --- Key schedule (RFC 9420 §8) --------------------------------------------------------


def joiner_secret(init_secret: bytes, commit_secret: bytes, group_context: bytes) -> bytes:
    """joiner_secret = ExpandWithLabel(Extract(init_secret, commit_secret), "joiner", GC, Nh).

    RFC 9420 §8: ``init_secret`` is the previous epoch's, ``commit_secret`` the path secret
    of the Commit (or zeros without a path), ``group_context`` the new epoch's encoded
    GroupContext. A Welcome carries this value to joiners instead of the two inputs.
    """
    return expand_with_label(extract(init_secret, commit_secret), "joiner", group_context, HASH_LEN)


def welcome_secret(joiner_secret: bytes, psk_secret: bytes) -> bytes:
    """welcome_secret = DeriveSecret(Extract(joiner_secret, psk_secret), "welcome") (RFC 9420 §8).

    A joiner needs it before it knows the GroupContext: it decrypts the GroupInfo that
    carries the GroupContext (§12.4.3.1), so this cannot wait for ``epoch_secrets``.
    """
    return derive_secret(extract(joiner_secret, psk_secret), "welcome")


def epoch_secrets(
    joiner_secret: bytes, psk_secret: bytes, group_context: bytes
) -> tuple[bytes, EpochSecrets]:
    """The rest of RFC 9420 §8 from the joiner secret: (welcome_secret, the epoch's secrets).

    ``psk_secret`` is ``NO_PSK`` unless PSKs were injected (§8.4). The epoch secret itself
    is used only here and not returned, so it does not outlive the derivation.
    """
    member_secret = extract(joiner_secret, psk_secret)
    epoch_secret = expand_with_label(member_secret, "epoch", group_context, HASH_LEN)
    secrets = EpochSecrets(
        sender_data_secret=derive_secret(epoch_secret, "sender data"),
        encryption_secret=derive_secret(epoch_secret, "encryption"),
        exporter_secret=derive_secret(epoch_secret, "exporter"),
        external_secret=derive_secret(epoch_secret, "external"),
        confirmation_key=derive_secret(epoch_secret, "confirm"),
        membership_key=derive_secret(epoch_secret, "membership"),
        resumption_psk=derive_secret(epoch_secret, "resumption"),
        epoch_authenticator=derive_secret(epoch_secret, "authentication"),
        init_secret=derive_secret(epoch_secret, "init"),
    )
    return derive_secret(member_secret, "welcome"), secrets


def welcome_key_nonce(welcome_secret: bytes) -> tuple[bytes, bytes]:
    """The AEAD key and nonce that encrypt a Welcome's GroupInfo (RFC 9420 §12.4.3.1)."""
    key = expand_with_label(welcome_secret, "key", b"", AEAD_KEY_LEN)
    nonce = expand_with_label(welcome_secret, "nonce", b"", AEAD_NONCE_LEN)
    return key, nonce


def exporter(exporter_secret: bytes, label: str, context: bytes, length: int) -> bytes:
    """MLS-Exporter (RFC 9420 §8.5): secrets for other protocols, bound to label and context."""
    return expand_with_label(
        derive_secret(exporter_secret, label), "exported", hash_(context), length
    )


# --- Transcript hashes and confirmation tag (RFC 9420 §8.2, §6.1) ------------------------


def confirmed_transcript_hash(interim_transcript_hash: bytes, confirmed_content: bytes) -> bytes:
    """Hash(interim_transcript_hash_[n-1] || ConfirmedTranscriptHashInput_[n]) (RFC 9420 §8.2).

    ``confirmed_content`` is the encoded ConfirmedTranscriptHashInput: wire_format, the
    FramedContent and its signature, i.e. an AuthenticatedContent without the
    confirmation tag. It chains every Commit into the group's history.
    """
    return hash_(interim_transcript_hash + confirmed_content)


def interim_transcript_hash(confirmed_transcript_hash: bytes, confirmation_tag: bytes) -> bytes:
    """Hash(confirmed_transcript_hash_[n] || InterimTranscriptHashInput_[n]) (RFC 9420 §8.2).

    ``confirmation_tag`` is the raw MAC value; this function encodes it as the struct's
    ``MAC confirmation_tag`` field, an ``opaque<V>`` (its varint length, then the bytes).
    """
    return hash_(confirmed_transcript_hash + bytes(Writer().opaque(confirmation_tag)))


def confirmation_tag(confirmation_key: bytes, confirmed_transcript_hash: bytes) -> bytes:
    """MAC(confirmation_key, confirmed_transcript_hash), HMAC-SHA256 (RFC 9420 §6.1).

    It proves that the committer and the receiver derived the same epoch: a receiver
    recomputes it and compares with ``verify_confirmation_tag``.
    """
    return hmac.new(confirmation_key, confirmed_transcript_hash, "sha256").digest()


def verify_confirmation_tag(
    confirmation_key: bytes, confirmed_transcript_hash: bytes, tag: bytes
) -> bool:
    """Constant-time check of a received confirmation tag (RFC 9420 §6.1, §12.4.2 step 13)."""
    return hmac.compare_digest(confirmation_tag(confirmation_key, confirmed_transcript_hash), tag)


# --- Message protection helpers (RFC 9420 §6.3) -----------------------------------------


def sender_data_key_nonce(sender_data_secret: bytes, ciphertext: bytes) -> tuple[bytes, bytes]:
    """Key and nonce that encrypt a PrivateMessage's SenderData (RFC 9420 §6.3.2).

    They are bound to ``ciphertext_sample``, the first KDF.Nh bytes of the content
    ciphertext (all of it when shorter), so each message's sender data gets its own nonce.
    """
    sample = ciphertext[:HASH_LEN]
    key = expand_with_label(sender_data_secret, "key", sample, AEAD_KEY_LEN)
    nonce = expand_with_label(sender_data_secret, "nonce", sample, AEAD_NONCE_LEN)
    return key, nonce


def apply_reuse_guard(nonce: bytes, reuse_guard: bytes) -> bytes:
    """XOR the 4-byte reuse_guard into the nonce's first bytes (RFC 9420 §6.3.1).

    A sender that lost its state and reused a generation still does not reuse a nonce.
    """
    if len(reuse_guard) != REUSE_GUARD_LEN or len(nonce) != AEAD_NONCE_LEN:
        raise ValueError("reuse guard must be 4 bytes and the nonce 12 bytes")
    head = bytes(a ^ b for a, b in zip(nonce[:REUSE_GUARD_LEN], reuse_guard, strict=True))
    return head + nonce[REUSE_GUARD_LEN:]


# --- Hash ratchets and the secret tree (RFC 9420 §9) -------------------------------------


class HashRatchet:
    """One sender's handshake or application ratchet (RFC 9420 §9.1).

    Generation j's key and nonce are DeriveTreeSecret(secret_j, "key"/"nonce", j, ...), and
    secret_{j+1} = DeriveTreeSecret(secret_j, "secret", j, Nh); secret_j is then dropped.
    Receivers accept generations out of order within ``OUT_OF_ORDER_TOLERANCE`` behind the
    head and at most ``MAX_FORWARD_DISTANCE`` ahead of it, as openmls does with Orange's
    ``SenderRatchetConfiguration(500, 1000)``; skipped keys are kept only in that window,
    and every key is handed out once (§9.2: "MUST delete ... once used").
    """

    __slots__ = ("_generation", "_past", "_secret")

    def __init__(self, secret: bytes, generation: int = 0) -> None:
        self._secret: bytes | None = secret
        self._generation = generation
        self._past: dict[int, tuple[bytes, bytes]] = {}

    def __repr__(self) -> str:
        return f"HashRatchet(generation={self._generation}, retained={len(self._past)})"

    @property
    def generation(self) -> int:
        """The next generation not yet derived (the ratchet head)."""
        return self._generation

    @property
    def retained_generations(self) -> tuple[int, ...]:
        """Generations whose keys are still held (skipped, not yet used), ascending."""
        return tuple(sorted(self._past))

    def next(self) -> tuple[int, bytes, bytes]:
        """The sender's next (generation, key, nonce); the ratchet moves past it at once."""
        generation, key, nonce = self._forward()
        self._prune()
        return generation, key, nonce

    def key_nonce(self, generation: int) -> tuple[bytes, bytes]:
        """The receiver's (key, nonce) for ``generation``, usable exactly once.

        ``RatchetError`` if the generation was already used, is more than
        ``OUT_OF_ORDER_TOLERANCE`` behind the head, or more than ``MAX_FORWARD_DISTANCE``
        ahead of it: a replay, a stale message or a jump that would cost unbounded work.
        """
        if not 0 <= generation <= MAX_GENERATION:
            raise RatchetError(f"generation {generation} is not a usable uint32 generation")
        head = self._generation
        if generation < head:
            if head - generation > OUT_OF_ORDER_TOLERANCE:
                raise RatchetError(
                    f"generation {generation} is more than {OUT_OF_ORDER_TOLERANCE} "
                    f"behind the ratchet (at {head})"
                )
            keys = self._past.pop(generation, None)
            if keys is None:
                raise RatchetError(f"generation {generation} was already used")
            return keys
        if generation - head > MAX_FORWARD_DISTANCE:
            raise RatchetError(
                f"generation {generation} is more than {MAX_FORWARD_DISTANCE} "
                f"ahead of the ratchet (at {head})"
            )
        keep_from = generation + 1 - OUT_OF_ORDER_TOLERANCE
        while self._generation < generation:
            skipped, key, nonce = self._forward()
            if skipped >= keep_from:
                self._past[skipped] = (key, nonce)
        _, key, nonce = self._forward()
        self._prune()
        return key, nonce

    def give_back(self, generation: int, key: bytes, nonce: bytes) -> None:
        """Return a key handed out by ``key_nonce`` whose message did not open or verify:
        a forged or damaged copy must not spend the genuine message's key."""
        if self._generation - OUT_OF_ORDER_TOLERANCE <= generation < self._generation:
            self._past.setdefault(generation, (key, nonce))

    def _forward(self) -> tuple[int, bytes, bytes]:
        """Derive the head generation's key and nonce and replace the secret by the next one."""
        secret, generation = self._secret, self._generation
        if secret is None or generation > MAX_GENERATION:
            raise RatchetError("the ratchet has reached its last generation")
        key = derive_tree_secret(secret, "key", generation, AEAD_KEY_LEN)
        nonce = derive_tree_secret(secret, "nonce", generation, AEAD_NONCE_LEN)
        last = generation == MAX_GENERATION
        self._secret = None if last else derive_tree_secret(secret, "secret", generation, HASH_LEN)
        self._generation = generation + 1
        return generation, key, nonce

    def _prune(self) -> None:
        """Drop skipped keys that fell out of the out-of-order window."""
        floor = self._generation - OUT_OF_ORDER_TOLERANCE
        for stale in [g for g in self._past if g < floor]:
            del self._past[stale]


def _level(node: int) -> int:
    """A node's level in the array-represented tree: its count of trailing one bits (§C)."""
    level = 0
    while (node >> level) & 1:
        level += 1
    return level


class SecretTree:
    """The secret tree of one epoch (RFC 9420 §9), derived lazily from encryption_secret.

    tree_node_[root] = encryption_secret; a parent's children are
    ExpandWithLabel(parent, "tree", "left"/"right", Nh); a leaf's ratchets start at
    ExpandWithLabel(leaf, "handshake"/"application", "", Nh). Per §9.2 a parent's secret is
    deleted once its children are derived and a leaf's once its ratchets are. The tree
    has as many leaves as the ratchet tree, a power of two; ``leaf_count`` is rounded up to
    one, which gives the same derivations for every leaf below it.
    """

    __slots__ = ("_leaf_count", "_nodes", "_ratchets", "_root")

    def __init__(self, encryption_secret: bytes, leaf_count: int) -> None:
        if leaf_count < 1:
            raise ValueError(f"a secret tree needs at least one leaf, not {leaf_count}")
        width = 1 << (leaf_count - 1).bit_length()
        self._leaf_count = leaf_count
        self._root = width - 1
        self._nodes: dict[int, bytes] = {self._root: encryption_secret}
        self._ratchets: dict[int, tuple[HashRatchet, HashRatchet]] = {}

    def __repr__(self) -> str:
        return f"SecretTree(leaf_count={self._leaf_count}, stored_nodes={len(self._nodes)})"

    @property
    def stored_node_count(self) -> int:
        """How many tree-node secrets are still held (shrinks as §9.2 deletion proceeds)."""
        return len(self._nodes)

    def handshake(self, leaf_index: int) -> HashRatchet:
        """The handshake ratchet of the member at ``leaf_index`` (keys for Commits, Proposals)."""
        return self._leaf_ratchets(leaf_index)[0]

    def application(self, leaf_index: int) -> HashRatchet:
        """The application ratchet of the member at ``leaf_index`` (keys for media frames)."""
        return self._leaf_ratchets(leaf_index)[1]

    def _leaf_ratchets(self, leaf_index: int) -> tuple[HashRatchet, HashRatchet]:
        if not 0 <= leaf_index < self._leaf_count:
            raise ValueError(f"leaf {leaf_index} is outside a tree of {self._leaf_count} leaves")
        ratchets = self._ratchets.get(leaf_index)
        if ratchets is None:
            leaf_secret = self._take_leaf_secret(2 * leaf_index)
            ratchets = (
                HashRatchet(expand_with_label(leaf_secret, "handshake", b"", HASH_LEN)),
                HashRatchet(expand_with_label(leaf_secret, "application", b"", HASH_LEN)),
            )
            self._ratchets[leaf_index] = ratchets
        return ratchets

    def _take_leaf_secret(self, target: int) -> bytes:
        """Walk from the root to ``target``, splitting each stored secret on the way (§9.2)."""
        node = self._root
        while node != target:
            level = _level(node)
            left, right = node ^ (1 << (level - 1)), node ^ (3 << (level - 1))
            secret = self._nodes.pop(node, None)
            if secret is not None:
                self._nodes[left] = expand_with_label(secret, "tree", b"left", HASH_LEN)
                self._nodes[right] = expand_with_label(secret, "tree", b"right", HASH_LEN)
            node = left if target < node else right
        return self._nodes.pop(target)


def psk_secret(psks: list[tuple[bytes, bytes]]) -> bytes:
    """§8.4: the psk_secret from (encoded PreSharedKeyID, key) pairs, in the order the
    Welcome or Commit lists them; ``NO_PSK`` for none. The recorder holds no PSK in a call
    (Orange never uses them); the working group's vectors do, so the rule is kept exact."""
    secret = NO_PSK
    for index, (psk_id, key) in enumerate(psks):
        extracted = extract(NO_PSK, key)
        label = bytes(Writer().raw(psk_id).u16(index).u16(len(psks)))
        psk_input = expand_with_label(extracted, "derived psk", label, HASH_LEN)
        secret = extract(psk_input, secret)
    return secret
