"""The closed code points of RFC 9420's structures (§6, §5.3, §7.2, §12.1, §13, §17).

``closed`` reads one: RFC 9420 gives no way to skip an unknown wire format, content type,
sender type, proposal type, credential type, leaf node source, node type or PSK type, so
an unknown or ``reserved(0)`` value is a ``DecodeError``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TypeVar

from bot.e2ee.codec import DecodeError

CIPHER_SUITE_1 = 0x0001  # MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519, the only one we run


class ProtocolVersion(IntEnum):
    """§6: only MLS 1.0 exists; ``reserved(0)`` and anything newer are refused."""

    MLS10 = 1


class ContentType(IntEnum):
    """§6: what a FramedContent / PrivateMessage carries."""

    APPLICATION = 1
    PROPOSAL = 2
    COMMIT = 3


class SenderType(IntEnum):
    """§6: who sent a FramedContent."""

    MEMBER = 1
    EXTERNAL = 2
    NEW_MEMBER_PROPOSAL = 3
    NEW_MEMBER_COMMIT = 4


class WireFormat(IntEnum):
    """§6: the MLSMessage variants (uint16)."""

    PUBLIC_MESSAGE = 1
    PRIVATE_MESSAGE = 2
    WELCOME = 3
    GROUP_INFO = 4
    KEY_PACKAGE = 5


class ProposalType(IntEnum):
    """§12.1 / §17.4: the proposals RFC 9420 defines (uint16)."""

    ADD = 1
    UPDATE = 2
    REMOVE = 3
    PSK = 4
    REINIT = 5
    EXTERNAL_INIT = 6
    GROUP_CONTEXT_EXTENSIONS = 7


class ExtensionType(IntEnum):
    """§17.3: known extension types. Others stay opaque ``Extension`` values."""

    APPLICATION_ID = 1
    RATCHET_TREE = 2
    REQUIRED_CAPABILITIES = 3
    EXTERNAL_PUB = 4
    EXTERNAL_SENDERS = 5


class CredentialType(IntEnum):
    """§5.3 / §17.5: only basic and X.509 have a wire format we can parse."""

    BASIC = 1
    X509 = 2


class LeafNodeSource(IntEnum):
    """§7.2: why a LeafNode was made; it decides what its signature covers."""

    KEY_PACKAGE = 1
    UPDATE = 2
    COMMIT = 3


class NodeType(IntEnum):
    """§7.8 / §12.4.3.3: the tag of a ratchet tree node."""

    LEAF = 1
    PARENT = 2


class ProposalOrRefType(IntEnum):
    """§12.4: a proposal inline, or by reference to one received before."""

    PROPOSAL = 1
    REFERENCE = 2


class PSKType(IntEnum):
    """§8.4: where a pre-shared key comes from."""

    EXTERNAL = 1
    RESUMPTION = 2


class ResumptionPSKUsage(IntEnum):
    """§8.6: why a resumption PSK is injected."""

    APPLICATION = 1
    REINIT = 2
    BRANCH = 3


_E = TypeVar("_E", bound=IntEnum)


def closed(kind: type[_E], value: int) -> _E:
    """A closed enum value, or ``DecodeError``: RFC 9420 has no way to skip an unknown one."""
    try:
        return kind(value)
    except ValueError:
        raise DecodeError(f"{kind.__name__}: unknown or reserved value {value}") from None
