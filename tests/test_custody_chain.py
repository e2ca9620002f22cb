"""The fragment chain: follows a growing file and proves a copy of it, stretch by stretch."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bot.custody.chain import GENESIS, FragmentChain, FragmentLink, check_fragments, link


def _grow(path: Path, pieces: list[bytes]) -> list[FragmentLink]:
    chain = FragmentChain(path)
    links = []
    for piece in pieces:
        with path.open("ab") as out:
            out.write(piece)
        made = chain.advance()
        assert made is not None
        links.append(made)
    assert chain.advance() is None  # nothing new, no link
    return links


def test_each_link_is_the_hash_of_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "r.mp4"
    links = _grow(path, [b"header", b"fragment-1", b"fragment-2"])
    assert [(x.offset, x.size) for x in links] == [(0, 6), (6, 10), (16, 10)]
    assert links[1].sha256 == hashlib.sha256(b"fragment-1").hexdigest()
    assert links[0].chain == link(GENESIS, links[0].sha256)
    assert links[2].chain == link(links[1].chain, links[2].sha256)


@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=8), st.data())
def test_any_change_to_the_bytes_is_named(pieces: list[bytes], data: st.DataObject) -> None:
    blob = b"".join(pieces)
    offsets = [sum(map(len, pieces[:i])) for i in range(len(pieces))]
    chain, links = GENESIS, []
    for i, (offset, piece) in enumerate(zip(offsets, pieces, strict=True)):
        sha = hashlib.sha256(piece).hexdigest()
        chain = link(chain, sha)
        links.append(FragmentLink(i, offset, len(piece), sha, chain))
    whole = check_fragments(io.BytesIO(blob), links)
    assert whole.problem is None and (whole.links, whole.covered) == (len(pieces), len(blob))
    position = data.draw(st.integers(0, len(blob) - 1))
    flipped = bytearray(blob)
    flipped[position] ^= 0x01
    broken = check_fragments(io.BytesIO(bytes(flipped)), links)
    fragment = max(i for i, offset in enumerate(offsets) if offset <= position)
    assert broken.problem is not None and broken.problem.startswith(f"fragment {fragment} ")
    assert broken.links == fragment and broken.covered == offsets[fragment]


def test_a_removed_or_cut_fragment_is_named(tmp_path: Path) -> None:
    path = tmp_path / "r.mp4"
    links = _grow(path, [b"header", b"fragment-1", b"fragment-2", b"fragment-3"])
    blob = path.read_bytes()
    removed = blob[:6] + blob[16:]
    assert check_fragments(io.BytesIO(removed), links).problem == (
        "fragment 1 (bytes 6-16) differs from what was written"
    )
    truncated = blob[:30]
    assert check_fragments(io.BytesIO(truncated), links).problem == (
        "fragment 3 (bytes 26-36) is cut short: the object ends at byte 30"
    )
    missing_line = [links[0], *links[2:]]
    problem = check_fragments(io.BytesIO(blob), missing_line).problem
    assert problem == "fragment 1: the trail records fragment 2 at byte 16 next (a line is missing)"


def test_a_chain_continues_after_a_proven_prefix(tmp_path: Path) -> None:
    """What ``bot recover`` does: the trail's links hold for the spool, the rest is linked."""
    path = tmp_path / "r.mp4"
    links = _grow(path, [b"header", b"fragment-1"])
    with path.open("ab") as out:
        out.write(b"written-after-the-last-line")
    with path.open("rb") as source:
        proven = check_fragments(source, links)
    chain = FragmentChain(path, proven)
    tail = chain.advance()
    assert tail is not None and (tail.index, tail.offset) == (2, 16)
    assert tail.chain == link(
        links[-1].chain, hashlib.sha256(b"written-after-the-last-line").hexdigest()
    )
