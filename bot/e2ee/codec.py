"""The TLS presentation language as RFC 9420 uses it (section 2.1): the wire's one codec.

Integers are big-endian of fixed width; variable-size vectors (``opaque<V>``, ``T<V>``)
carry their length in bytes as a QUIC-style variable-length integer (1, 2 or 4 bytes,
the two top bits saying which; the shortest form is required, ``0b11`` is invalid);
``optional<T>`` is a presence byte. Every decode is bounded by the bytes it was given and
fails with ``DecodeError`` naming what it was reading, never with an IndexError deep in
a parser: input here comes from other people's machines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, TypeVar

T = TypeVar("T")

MAX_VARINT: Final = (1 << 30) - 1


class DecodeError(ValueError):
    """Bytes that are not the structure expected; the message names where."""


class Reader:
    """Reads one structure from bytes; ``done`` checks nothing is left over."""

    def __init__(self, data: bytes, what: str = "message") -> None:
        self._data = memoryview(data)
        self._at = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._at

    def raw(self, size: int) -> bytes:
        if size < 0 or self._at + size > len(self._data):
            raise DecodeError(
                f"{self._what}: needs {size} bytes at offset {self._at}, "
                f"{self.remaining} left (truncated)"
            )
        chunk = bytes(self._data[self._at : self._at + size])
        self._at += size
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.raw(size), "big")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def u64(self) -> int:
        return self.uint(8)

    def varint(self) -> int:
        first = self.u8()
        prefix = first >> 6
        if prefix == 3:
            raise DecodeError(f"{self._what}: invalid variable-length integer prefix 0b11")
        value = first & 0x3F
        for _ in range((1 << prefix) - 1):
            value = (value << 8) | self.u8()
        if prefix and value < (1 << (8 * (1 << (prefix - 1)) - 2)):
            raise DecodeError(f"{self._what}: variable-length integer not in its shortest form")
        return value

    def opaque(self) -> bytes:
        """``opaque<V>``: a varint length, then that many bytes."""
        return self.raw(self.varint())

    def vector(self, item: Callable[[Reader], T]) -> list[T]:
        """``T<V>``: a varint length in bytes, then items until exactly that many are read."""
        inner = Reader(self.opaque(), self._what)
        items = []
        while inner.remaining:
            items.append(item(inner))
        return items

    def optional(self, item: Callable[[Reader], T]) -> T | None:
        present = self.u8()
        if present not in (0, 1):
            raise DecodeError(f"{self._what}: optional presence byte {present}, not 0 or 1")
        return item(self) if present else None

    def done(self) -> None:
        if self.remaining:
            raise DecodeError(f"{self._what}: {self.remaining} bytes left over after decoding")


class Writer:
    """Builds one structure; ``bytes()`` gives the encoding."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def __bytes__(self) -> bytes:
        return b"".join(self._parts)

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def uint(self, value: int, size: int) -> Writer:
        return self.raw(value.to_bytes(size, "big"))

    def u8(self, value: int) -> Writer:
        return self.uint(value, 1)

    def u16(self, value: int) -> Writer:
        return self.uint(value, 2)

    def u32(self, value: int) -> Writer:
        return self.uint(value, 4)

    def u64(self, value: int) -> Writer:
        return self.uint(value, 8)

    def varint(self, value: int) -> Writer:
        if value < 0 or value > MAX_VARINT:
            raise ValueError(f"{value} does not fit a variable-length integer")
        if value < 1 << 6:
            return self.u8(value)
        if value < 1 << 14:
            return self.u16(0x4000 | value)
        return self.u32(0x8000_0000 | value)

    def opaque(self, data: bytes) -> Writer:
        return self.varint(len(data)).raw(data)

    def vector(self, items: Iterable[T], item: Callable[[Writer, T], object]) -> Writer:
        inner = Writer()
        for value in items:
            item(inner, value)
        return self.opaque(bytes(inner))

    def optional(self, value: T | None, item: Callable[[Writer, T], object]) -> Writer:
        if value is None:
            return self.u8(0)
        self.u8(1)
        item(self, value)
        return self
