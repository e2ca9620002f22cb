"""The encode/decode contract every RFC 9420 structure here follows (§2.1).

``Struct`` gives ``to_bytes`` / ``from_bytes`` (refusing trailing bytes) on top of each
structure's ``encode`` / ``decode`` over the TLS presentation codec (``bot.e2ee.codec``).
"""

from __future__ import annotations

from typing import Self

from bot.e2ee.codec import Reader, Writer


class Struct:
    """Base of every self-delimiting structure: ``to_bytes`` / ``from_bytes`` on top of
    ``encode`` / ``decode``."""

    def encode(self, w: Writer) -> None:
        raise NotImplementedError

    @classmethod
    def decode(cls, r: Reader) -> Self:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        w = Writer()
        self.encode(w)
        return bytes(w)

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode exactly ``data``: trailing bytes are an error (a forged suffix is not
        covered by anything else)."""
        r = Reader(data, cls.__name__)
        value = cls.decode(r)
        r.done()
        return value


def put(w: Writer, item: Struct) -> None:
    item.encode(w)
