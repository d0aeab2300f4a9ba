"""The shape the design promises: no task-name or target-kind tests outside medp2p/tasks/, small
modules, short functions in train/ and infer/, and the task list spelled once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from medp2p.tasks import TASKS

PACKAGE = Path(__file__).resolve().parents[1] / "medp2p"
MODULES = sorted(PACKAGE.rglob("*.py"))
NAMES = "|".join(sorted(TASKS))


def _outside_tasks() -> list[Path]:
    return [p for p in MODULES if p.relative_to(PACKAGE).parts[0] != "tasks"]


def test_no_task_name_or_kind_comparison_outside_tasks() -> None:
    pattern = re.compile(
        rf"""(==|!=|\bin\b|\bis\b)\s*\(?\s*["']({NAMES})["']|["']({NAMES})["']\s*(==|!=)|target_kind|task\.name\s*(==|!=|in)\s"""
    )
    hits = []
    for path in _outside_tasks():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                hits.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_no_dict_keyed_by_task_name_outside_tasks() -> None:
    hits = []
    for path in _outside_tasks():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                if len(keys & set(TASKS)) >= 2:
                    hits.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not hits, hits


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 400, f"{path.name} is asking to be split"


@pytest.mark.parametrize(
    "path", [p for p in MODULES if p.relative_to(PACKAGE).parts[0] in ("train", "infer")], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_functions_in_train_and_infer_are_short(path: Path) -> None:
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) else node.body  # the code, not its documentation
            lines = (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1 if body else 0
            if lines > 60:
                long.append(f"{node.name}: {lines} lines")
    assert not long, long


def test_the_task_list_is_spelled_once() -> None:
    spelled = []
    for path in _outside_tasks():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if len(names & set(TASKS)) >= 3:
                    spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
            if isinstance(node, ast.Subscript) and getattr(node.value, "id", "") == "Literal":
                names = {e.value for e in ast.walk(node.slice) if isinstance(e, ast.Constant)}
                if len(names & set(TASKS)) >= 2:
                    spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not spelled, spelled


def test_get_task_is_called_only_by_the_plan_and_config() -> None:
    callers = {p.relative_to(PACKAGE).as_posix() for p in _outside_tasks() if re.search(r"\bget_task\(", p.read_text())}
    assert callers <= set(), callers
