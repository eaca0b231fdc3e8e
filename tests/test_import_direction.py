"""The packages import one way: siamese/inference/ (what the app, export and evaluation load) imports nothing of
siamese's training or evaluation, and stagekit/, under both stages, nothing of the stages, the app or the pipeline.
Read from the source with `ast`, so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stagekit.config import REPO_ROOT


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module `path` imports (absolute names; a relative import resolved against its package)."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from siamese import train`
    return found


def offending(folder: str, allowed: tuple[str, ...], forbidden: tuple[str, ...], root: Path = REPO_ROOT) -> list[str]:
    """'FILE imports MODULE' for each module of a `forbidden` package outside `allowed` that a file under `folder`
    imports (the bare package `siamese` is allowed: importing a subpackage runs its __init__ only)."""
    bad = []
    for path in sorted((root / folder).rglob("*.py")):
        for module in sorted(imported_modules(path, root)):
            if module.split(".")[0] in forbidden and module != "siamese" and not module.startswith(allowed):
                bad.append(f"{path.relative_to(root).as_posix()} imports {module}")
    return bad


STAGES = ("siamese", "pretrain", "app", "pipeline", "bench")


@pytest.mark.parametrize(("folder", "allowed"), [("siamese/inference", ("siamese.inference",)), ("stagekit", ())])
def test_imports_go_one_way(folder, allowed):
    assert not offending(folder, allowed, STAGES)


def test_the_check_sees_an_import_inside_a_function_and_a_relative_one(tmp_path):
    folder = tmp_path / "siamese" / "inference"
    folder.mkdir(parents=True)
    (folder / "leaky.py").write_text(
        "from . import encoder\nfrom .. import nli_data\n\ndef f():\n    from siamese.train import main\n",
        encoding="utf-8",
    )
    assert offending("siamese/inference", ("siamese.inference",), STAGES, tmp_path) == [
        "siamese/inference/leaky.py imports siamese.nli_data",
        "siamese/inference/leaky.py imports siamese.train",
        "siamese/inference/leaky.py imports siamese.train.main",
    ]
