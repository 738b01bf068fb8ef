"""What `pip install .` ships: every subpackage of jmvae_cli, or the installed `jmvae` cannot import it."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed():
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "jmvae_cli").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found <= packages, f"missing from [tool.setuptools] packages: {sorted(found - packages)}"
