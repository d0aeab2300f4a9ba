"""The package layers (docs/architecture.md): a module imports only from layers to its left.

``types | io, metrics, models, device | viz | data | tasks | config | plan | infer | train | eval | demo | cli``

As ``../shared/DESIGN.md`` orders them, except that ``viz`` sits just above ``io`` (it draws
arrays and writes PNGs atomically, and training's previews use it, which DESIGN's
``train | viz`` order would forbid) and
that the tasks layer is three rooms in order (the task values, the config that validates task
names against them, the plan built from both); ``demo`` runs train, predict and evaluate, so it
sits above eval. ``io`` is the only code touching nibabel, SimpleITK, pydicom and highdicom, and it
never imports torch; ``models`` is torch only and never touches files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medp2p"
LAYERS = [
    {"types"}, {"io", "metrics", "models", "device"}, {"viz"}, {"data"}, {"tasks"}, {"config"}, {"plan"}, {"infer"}, {"train"},
    {"eval"}, {"demo"}, {"cli"}, {"__main__"},  # __main__: `python -m medp2p` runs the CLI
]  # fmt: skip
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
FILE_LIBRARIES = {"nibabel", "SimpleITK", "pydicom", "highdicom"}


def _room(module: Path) -> str:
    rel = module.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(module: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _room(p) in RANK)


def test_every_module_belongs_to_a_layer() -> None:
    rooms = {_room(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert rooms <= set(RANK), f"modules outside the layers of DESIGN.md: {rooms - set(RANK)}"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_left(module: Path) -> None:
    room = _room(module)
    for name in _imports(module):
        top = name.split(".")[0]
        if top == "medp2p" and name != "medp2p":
            target = name.split(".")[1]
            assert RANK[target] < RANK[room] or target == room, f"{module.name}: {room} may not import {name}"

        if top in FILE_LIBRARIES:
            assert room in ("io",), f"{module.name}: only medp2p.io may import {top}"
        if room == "io":
            assert top != "torch" and top != "monai", f"{module.name}: medp2p.io never imports {top}"
        if room == "models":
            assert top not in FILE_LIBRARIES, f"{module.name}: models never touch files"
        if room == "viz":
            assert top not in ("torch", "monai"), f"{module.name}: viz draws numpy arrays"
