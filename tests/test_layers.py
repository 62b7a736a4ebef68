"""Imports run only down the layers of docs/architecture.md, in every module of the package."""

import ast
from pathlib import Path

import diffpolicy

# Lower rank = lower layer. A module may import its own package and any package of a lower rank.
RANKS = {"core": 0, "nets": 0, "data": 1, "accel": 2, "policy": 3, "eval": 4, "export": 4, "training": 5, "control": 6,
         "imagegen": 6, "cli": 7}
ROOT = Path(diffpolicy.__file__).parent


def imported_packages(path: Path) -> set[str]:
    """The ``diffpolicy.<package>`` names a module imports (absolute or relative, at any depth of the file)."""
    own = path.relative_to(ROOT).parts[:-1]  # e.g. ("control",)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(own[: len(own) - node.level + 1])
                names = [".".join(["diffpolicy", *base, *(node.module or "").split(".")]).rstrip(".")]
                if not node.module:  # from .. import x
                    names = [f"diffpolicy.{'.'.join(base + [a.name])}" for a in node.names]
            else:
                names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] == "diffpolicy" and len(parts) > 1 and parts[1] in RANKS:
                found.add(parts[1])
    return found


def test_no_import_runs_up_the_layers():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).parts
        if len(rel) == 1:  # diffpolicy/__init__.py
            continue
        package = rel[0]
        for target in imported_packages(path) - {package}:
            if RANKS[target] >= RANKS[package]:
                bad.append(f"{path.relative_to(ROOT)} imports diffpolicy.{target}")
    assert not bad, "imports running up (or across) the layers:\n" + "\n".join(bad)


def test_the_checker_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    fake = tmp_path / "diffpolicy" / "policy"
    fake.mkdir(parents=True)
    module = fake / "x.py"
    module.write_text("from ..training.loop import train\nimport diffpolicy.control\nfrom . import base\n"
                      "def f():\n    from diffpolicy.cli import eval\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "diffpolicy")
    assert imported_packages(module) == {"training", "control", "cli", "policy"}
