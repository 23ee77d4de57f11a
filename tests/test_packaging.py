"""What a regular (non-editable) install ships: every package of the source tree, and the default policy."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_in_the_tree_is_declared_for_installation() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    in_tree = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "aria").rglob("*.py")
               if "__pycache__" not in path.parts}
    in_tree |= {".".join(path.relative_to(ROOT).parts) for path in (ROOT / "aria").iterdir()
                if path.is_dir() and path.name != "__pycache__"}
    assert in_tree <= declared, f"not installed by a regular install: {sorted(in_tree - declared)}"
    assert setuptools["package-dir"]["aria_skills"] == "skills" and "aria_skills" in declared
    assert "*.toml" in setuptools["package-data"]["aria.defaults"]
