"""`make lint`'s checks catch what they are there for: run the project's own hook config on a tiny
repository holding a clean module and a broken one (an unused import, an untyped public function)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

BIN = Path(sys.executable).parent


def _repo(tmp_path: Path, module: str) -> Path:
    repo = tmp_path / "repo"
    (repo / "medp2p").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    shutil.copy(ROOT / ".pre-commit-config.yaml", repo / ".pre-commit-config.yaml")
    (repo / "medp2p" / "__init__.py").write_text('"""A probe package."""\n')
    (repo / "medp2p" / "probe.py").write_text(module)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "probe"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    return repo


def _lint(repo: Path) -> subprocess.CompletedProcess[str]:
    if not (BIN / "pre-commit").exists():
        pytest.skip("the lint tools are not installed (pip install -e '.[lint]')")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PRE_COMMIT_HOME": str(repo.parent / "pc")}
    return subprocess.run([str(BIN / "pre-commit"), "run", "--all-files"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


CLEAN = '''"""A clean module."""

from __future__ import annotations


def double(x: int) -> int:
    """Twice ``x``.

    Example:
        >>> double(2)
        4
    """
    return 2 * x
'''

BROKEN = '''"""A module with two findings."""

from __future__ import annotations

import os


def double(x):
    """Twice ``x``."""
    return 2 * x
'''


def test_the_hooks_pass_clean_code(tmp_path: Path) -> None:
    result = _lint(_repo(tmp_path, CLEAN))
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unused_import_and_an_untyped_public_function_fail_lint(tmp_path: Path) -> None:
    result = _lint(_repo(tmp_path, BROKEN))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "F401" in out and "`os` imported but unused" in out
    assert "Function is missing a type annotation" in out


def test_make_lint_runs_these_hooks_and_ci_runs_make_lint() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pre-commit run --all-files" in makefile.split("\nlint:")[1].split("\n\n")[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make lint") < ci.index("make test")
