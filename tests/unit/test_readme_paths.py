"""The README's table of paths matches the tree: every path it names exists, and every top-level folder
and every package folder under ``shared/`` and ``services/`` has its row."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def table_paths() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| path | what |") :]
    return set(re.findall(r"^\| `([^`]+)` \|", table.split("\n\n", 1)[0], re.M))


def test_every_path_in_the_table_exists():
    paths = table_paths()
    assert paths, "README.md has no table of paths"
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


def ignored_top_folders() -> set[str]:
    """Top-level folders git ignores (``out/`` of ``make run``, build folders): made by commands, not tracked."""
    lines = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    return {line.strip().strip("/") for line in lines if re.fullmatch(r"/?[\w.-]+/", line.strip())}


def test_every_folder_has_a_row():
    paths = {p.rstrip("/") for p in table_paths()}
    named_tops = {p.split("/", 1)[0] for p in paths}
    tops = {
        p.name
        for p in ROOT.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".egg-info")
    }
    assert sorted(tops - named_tops - ignored_top_folders() - {"shared", "services"}) == []
    packages = {
        f"{parent}/{p.name}"
        for parent in ("shared", "services")
        for p in (ROOT / parent).iterdir()
        if (p / "__init__.py").is_file()
    }
    assert sorted(packages - paths) == []
