"""Imports run one way: realtime -> rtc -> (recorder) <- media, storage; observe, control,
inspect and the commands beside them; the testbed (testbed/, a distribution of its own)
uses the product and is never used by it. A new import against the flow fails here,
naming the module and what it imported."""

from __future__ import annotations

import ast
from pathlib import Path

BOT = Path(__file__).resolve().parent.parent / "bot"
FOUNDATION = frozenset(
    {"bot", "bot.config", "bot.exitcodes", "bot.logs", "bot.tasks", "bot.timeline"}
)
"""Importable from anywhere: the version, settings, exit codes, logging, task helper."""
EVERYTHING = frozenset(
    {"bot.realtime", "bot.rtc", "bot.media", "bot.storage", "bot.manifest", "bot.recording"}
    | {"bot.observe", "bot.control", "bot.inspect", "bot.selftest", "bot.synthetic"}
    | {"bot.custody", "bot.e2ee", "bot.review", "bot.compose"}
)
ALLOWED: dict[str, frozenset[str]] = {
    "bot.config": frozenset(),
    "bot.exitcodes": frozenset(),
    "bot.logs": frozenset(),
    "bot.tasks": frozenset(),
    "bot.timeline": frozenset(),
    "bot.manifest": FOUNDATION,
    "bot.realtime": FOUNDATION | {"bot.realtime"},
    # MLS (RFC 9420): the wire, the crypto, the tree, the group; frames decrypted here.
    "bot.e2ee": FOUNDATION | {"bot.e2ee"},
    "bot.rtc": FOUNDATION | {"bot.realtime", "bot.rtc"},
    "bot.media": FOUNDATION | {"bot.media"},
    "bot.storage": FOUNDATION | {"bot.storage", "bot.manifest"},
    # Evidence: hash chains, the audit trail, signatures, verification, the FHIR resource.
    "bot.custody": FOUNDATION | {"bot.custody", "bot.manifest", "bot.storage"},
    "bot.recording": FOUNDATION
    | {"bot.realtime", "bot.rtc", "bot.media", "bot.storage"}
    | {"bot.manifest", "bot.custody", "bot.e2ee"},
    "bot.observe": FOUNDATION | {"bot.observe", "bot.storage", "bot.recording", "bot.custody"},
    # After the recording: the archived tracks through the recording's own media pipeline
    # and output, into storage.
    "bot.compose": FOUNDATION
    | {"bot.compose", "bot.media", "bot.storage", "bot.manifest", "bot.custody", "bot.recording"},
    # The synthetic participant: the selftest's publisher (and the testbed's).
    "bot.synthetic": FOUNDATION | {"bot.realtime", "bot.rtc", "bot.synthetic"},
    "bot.selftest": FOUNDATION | {"bot.realtime", "bot.rtc", "bot.storage", "bot.recording"},
    "bot.control": FOUNDATION | EVERYTHING,
    "bot.inspect": FOUNDATION
    | {"bot.inspect", "bot.media", "bot.storage", "bot.manifest", "bot.synthetic"},
    # The review page: reads the store, the manifests and the custody evidence, only.
    "bot.review": FOUNDATION | {"bot.review", "bot.storage", "bot.manifest", "bot.custody"},
    "bot.cli": FOUNDATION | EVERYTHING,
    "bot.__main__": frozenset({"bot.cli"}),
}


def _module(path: Path) -> str:
    parts = path.relative_to(BOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _area(module: str) -> str:
    """The entry of ``ALLOWED`` a module falls under (its package, or itself)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _imports(path: Path) -> set[str]:
    """Every ``bot.*`` module this file imports, lazy imports in functions included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in {"bot", "testbed"}}


def test_every_import_in_the_product_runs_with_the_flow() -> None:
    wrong = []
    for path in sorted(BOT.rglob("*.py")):
        module = _module(path)
        area = _area(module)
        if module == "bot":
            continue
        assert area in ALLOWED, f"{module}: a new area; say in ALLOWED what it may import"
        for name in _imports(path):
            target = _area(name)
            if target != area and target not in ALLOWED[area]:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)
