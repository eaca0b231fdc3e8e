"""docs/layout.md, the map of the code, stays true: every repository path it names exists, and every Python
file of the packages it maps has its line there."""

from __future__ import annotations

import re

from stagekit.config import REPO_ROOT

PAGE = REPO_ROOT / "docs" / "layout.md"
MAPPED = ("stagekit", "pretrain", "siamese", "app", "pipeline", "bench")
# A backticked repository path: folders and files with a known suffix, no placeholders or settings.
PATH = re.compile(r"`((?:[\w.-]+/)+(?:[\w.-]+\.(?:py|yaml|sh|ipynb|md))?)`")


def named_paths() -> set[str]:
    return set(PATH.findall(PAGE.read_text(encoding="utf-8")))


def test_every_path_the_map_names_exists():
    named = named_paths()
    assert len(named) > 100  # the pattern finds the page's lines
    missing = sorted(path for path in named if not (REPO_ROOT / path).exists())
    assert not missing, f"docs/layout.md names paths that do not exist: {missing}"


def test_every_python_file_and_config_folder_has_its_line():
    named = named_paths()
    files = [p for package in MAPPED for p in (REPO_ROOT / package).rglob("*.py") if "__pycache__" not in p.parts]
    folders = [p for p in (REPO_ROOT / "configs").iterdir() if p.is_dir()]
    wanted = {p.relative_to(REPO_ROOT).as_posix() for p in files} | {
        f"{p.relative_to(REPO_ROOT).as_posix()}/" for p in folders
    }
    assert not sorted(wanted - named), f"docs/layout.md has no line for: {sorted(wanted - named)}"
