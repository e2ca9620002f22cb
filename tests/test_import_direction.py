"""Imports run one way: realtime -> rtc -> (recorder) <- media, storage; observe, control,
inspect and the commands beside them. A new import against the flow fails here, naming
the module and what it imported."""

from __future__ import annotations

import ast
from pathlib import Path

BOT = Path(__file__).resolve().parent.parent / "bot"
FOUNDATION = frozenset({"bot", "bot.config", "bot.exitcodes", "bot.logs", "bot.tasks"})
"""Importable from anywhere: the version, settings, exit codes, logging, task helper."""
EVERYTHING_BUT_TESTBED = frozenset(
    {"bot.realtime", "bot.rtc", "bot.media", "bot.storage", "bot.manifest", "bot.recorder"}
    | {"bot.observe", "bot.control", "bot.inspect", "bot.selftest"}
)
ALLOWED: dict[str, frozenset[str]] = {
    "bot.config": frozenset(),
    "bot.exitcodes": frozenset(),
    "bot.logs": frozenset(),
    "bot.tasks": frozenset(),
    "bot.manifest": FOUNDATION,
    "bot.realtime": FOUNDATION | {"bot.realtime"},
    "bot.rtc": FOUNDATION | {"bot.realtime", "bot.rtc"},
    "bot.media": FOUNDATION | {"bot.media"},
    "bot.storage": FOUNDATION | {"bot.storage", "bot.manifest"},
    "bot.recorder": FOUNDATION
    | {"bot.realtime", "bot.rtc", "bot.media", "bot.storage"}
    | {"bot.manifest"},
    "bot.observe": FOUNDATION | {"bot.observe", "bot.storage", "bot.recorder"},
    "bot.selftest": FOUNDATION | {"bot.realtime", "bot.rtc", "bot.storage", "bot.recorder"},
    "bot.control": FOUNDATION | EVERYTHING_BUT_TESTBED,
    # The A/V measurement of `bot inspect` still comes from the testbed (issue #11 moves
    # it behind a plug-in point).
    "bot.inspect": FOUNDATION
    | {"bot.inspect", "bot.media", "bot.storage", "bot.manifest"}
    | {"bot.testbed"},
    # The developer commands (demo, sfu, publish) are the testbed's, imported lazily.
    "bot.cli": FOUNDATION | EVERYTHING_BUT_TESTBED | {"bot.testbed"},
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
    return {name for name in found if name == "bot" or name.startswith("bot.")}


def test_every_import_in_the_product_runs_with_the_flow() -> None:
    wrong = []
    for path in sorted(BOT.rglob("*.py")):
        module = _module(path)
        area = _area(module)
        if area == "bot.testbed" or module == "bot":
            continue
        assert area in ALLOWED, f"{module}: a new area; say in ALLOWED what it may import"
        for name in _imports(path):
            target = _area(name)
            if target != area and target not in ALLOWED[area]:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)
