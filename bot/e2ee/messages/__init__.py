"""The RFC 9420 structures the recorder reads or writes, with their exact wire encoding.

Every structure is a frozen dataclass with ``encode(w)`` / ``decode(r)`` over the TLS
presentation codec (RFC 9420 §2.1, ``bot.e2ee.codec``) and ``to_bytes`` / ``from_bytes``
(the latter refusing trailing bytes). Signatures, MACs and tree hashes are computed over
these encodings, so a structure must re-encode to exactly the bytes it was read from: the
classes keep every field on the wire, including unknown extensions (as opaque
``Extension``) and the lists of ``Capabilities`` (which carry GREASE values, §13.5).

Decoding is strict where RFC 9420 gives a closed ``select``: an unknown wire format,
content type, sender type, proposal type, credential type, leaf node source, node type or
PSK type cannot be parsed past, so it raises ``DecodeError``; so does ``reserved(0)``.
Input comes from other people's machines: a malformed message must fail with
``DecodeError`` (a ``ValueError``), never with another exception.

Orange Meets' profile (docs/e2ee-mls-choice.md §1) uses bare ``KeyPackage`` bytes, the ratchet
tree out of band (``encode_ratchet_tree`` / ``decode_ratchet_tree``) and ``PrivateMessage``
for both Commits and media frames.

The structures live in submodules by what they belong to; import them from here:
``enums`` (the closed code points), ``base`` (the encode/decode contract), ``leaf``
(credentials, capabilities, leaves, KeyPackages, the ratchet tree's encoding),
``proposals`` (UpdatePath, PSK ids, proposals, Commit, message content), ``welcome``
(GroupContext, GroupInfo, GroupSecrets, Welcome) and ``framing`` (framed and
authenticated content, Public/PrivateMessage, sender data, the MLSMessage envelope).
"""

from __future__ import annotations

from bot.e2ee.codec import DecodeError
from bot.e2ee.messages.enums import (
    CIPHER_SUITE_1,
    ContentType,
    CredentialType,
    ExtensionType,
    LeafNodeSource,
    NodeType,
    ProposalOrRefType,
    ProposalType,
    ProtocolVersion,
    PSKType,
    ResumptionPSKUsage,
    SenderType,
    WireFormat,
)
from bot.e2ee.messages.framing import (
    AuthenticatedContent,
    ConfirmedTranscriptHashInput,
    FramedContent,
    FramedContentAuthData,
    InterimTranscriptHashInput,
    MLSBody,
    MLSMessage,
    PaddingError,
    PrivateContentAAD,
    PrivateMessage,
    PrivateMessageContent,
    PublicMessage,
    Sender,
    SenderData,
    SenderDataAAD,
)
from bot.e2ee.messages.leaf import (
    Capabilities,
    Credential,
    Extension,
    KeyPackage,
    LeafNode,
    Lifetime,
    Node,
    ParentNode,
    decode_ratchet_tree,
    encode_ratchet_tree,
)
from bot.e2ee.messages.proposals import (
    Add,
    ApplicationData,
    Commit,
    Content,
    ExternalInit,
    GroupContextExtensions,
    HPKECiphertext,
    PreSharedKey,
    PreSharedKeyID,
    Proposal,
    ProposalBody,
    ProposalOrRef,
    ReInit,
    Remove,
    Update,
    UpdatePath,
    UpdatePathNode,
)
from bot.e2ee.messages.welcome import (
    EncryptedGroupSecrets,
    GroupContext,
    GroupInfo,
    GroupSecrets,
    PathSecret,
    Welcome,
)

__all__ = [
    "CIPHER_SUITE_1",
    "Add",
    "ApplicationData",
    "AuthenticatedContent",
    "Capabilities",
    "Commit",
    "ConfirmedTranscriptHashInput",
    "Content",
    "ContentType",
    "Credential",
    "CredentialType",
    "DecodeError",
    "EncryptedGroupSecrets",
    "Extension",
    "ExtensionType",
    "ExternalInit",
    "FramedContent",
    "FramedContentAuthData",
    "GroupContext",
    "GroupContextExtensions",
    "GroupInfo",
    "GroupSecrets",
    "HPKECiphertext",
    "InterimTranscriptHashInput",
    "KeyPackage",
    "LeafNode",
    "LeafNodeSource",
    "Lifetime",
    "MLSBody",
    "MLSMessage",
    "Node",
    "NodeType",
    "PSKType",
    "PaddingError",
    "ParentNode",
    "PathSecret",
    "PreSharedKey",
    "PreSharedKeyID",
    "PrivateContentAAD",
    "PrivateMessage",
    "PrivateMessageContent",
    "Proposal",
    "ProposalBody",
    "ProposalOrRef",
    "ProposalOrRefType",
    "ProposalType",
    "ProtocolVersion",
    "PublicMessage",
    "ReInit",
    "Remove",
    "ResumptionPSKUsage",
    "Sender",
    "SenderData",
    "SenderDataAAD",
    "SenderType",
    "Update",
    "UpdatePath",
    "UpdatePathNode",
    "Welcome",
    "WireFormat",
    "decode_ratchet_tree",
    "encode_ratchet_tree",
]
