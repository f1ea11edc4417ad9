"""The tree explains itself: every module's docstring says what it owns, and README's module map ("Where things
live") names every module of stream_app and nothing that is gone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import stream_app

ROOT = Path(stream_app.__file__).parent
README = ROOT.parent / "README.md"


def modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def mapped_paths() -> set[str]:
    """The module paths (relative to stream_app/) the map's rows name: `domain/events.py`, or `tools/simulator/`
    followed in its row by `scenarios.py` for tools/simulator/scenarios.py."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Where things live") :]
    section = section[: section.index("\n## ")]
    paths = set()
    for row in (line for line in section.splitlines() if line.startswith("| `")):
        directory = ""
        for name in re.findall(r"`([^` ]+)`", row):
            if name.endswith("/"):
                directory = name
            elif name.endswith(".py"):
                paths.add(name if "/" in name else directory + name)
    return paths


def test_every_module_says_what_it_owns() -> None:
    # an empty package marker (no code at all) is exempt
    silent = [
        str(path.relative_to(ROOT))
        for path in modules()
        if path.read_text(encoding="utf-8").strip() and not ast.get_docstring(ast.parse(path.read_text("utf-8")))
    ]
    assert not silent, silent


def test_the_readme_module_map_names_every_module_and_nothing_gone() -> None:
    mapped = mapped_paths()
    tree = {str(path.relative_to(ROOT)) for path in modules() if path.name not in ("__init__.py", "__main__.py")}
    assert not tree - mapped, f"modules missing from README's map: {sorted(tree - mapped)}"
    assert not mapped - tree, f"README's map names modules that are gone: {sorted(mapped - tree)}"
