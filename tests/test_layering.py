"""The import layering of DESIGN.md ("each layer imports only the layers above it"), read from the
source with ast, so that no import can quietly point the wrong way.

LAYERS lists ddim's top-level modules and packages from the bottom (imported by everything) up.
A module may import its own package and any module of a lower layer, never one of its own layer
or above. The math (schedule -> prediction -> samplers, objectives) is pure torch; the models and
the data know nothing of it; evaluation never imports training; only the CLI sits on top.
A new module must be placed here: the test names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ddim

LAYERS = [
    {"errors"},
    {"schedule", "noise", "device", "distributed", "latents", "models", "data"},
    {"timesteps", "prediction", "images", "inputs", "diffusers_compat"},
    {"samplers", "objectives"},
    {"sampling"},
    {"generation", "editing", "tuning"},
    {"config", "real_images"},
    {"training", "evaluation"},
    {"pipeline"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
SRC = Path(ddim.__file__).parent
FILES = sorted(p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] != "__init__.py")


def top(path: Path) -> str:
    """The top-level module or package of a file under src/ddim: 'samplers' for samplers/ddim.py."""
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def ddim_imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, top-level ddim module) of every import in a file, relative imports resolved."""
    package = [top(path)] if path.parent != SRC else []
    found = []
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from .x import y: inside the file's own package
                names = [".".join(["ddim", *package, node.module or ""])]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "ddim" and len(parts) > 1 and parts[1]:
                found.append((node.lineno, parts[1]))
    return sorted(found)


def test_every_module_has_a_layer():
    unplaced = sorted({top(p) for p in FILES} - set(RANK))
    assert not unplaced, f"place {unplaced} in tests/test_layering.py's LAYERS (see DESIGN.md)"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    me = top(path)
    if me not in RANK:
        pytest.skip(f"{me} has no layer (test_every_module_has_a_layer names it)")
    wrong = [
        f"{path.relative_to(SRC)}:{line} imports ddim.{dep} (layer {RANK.get(dep)}) from layer {RANK[me]}"
        for line, dep in ddim_imports(path)
        if dep != me and dep in RANK and RANK[dep] >= RANK[me]  # unplaced: named by the test above
    ]
    assert not wrong, "; ".join(wrong)


def test_evaluation_never_imports_training():
    files = [p for p in FILES if top(p) == "evaluation"]
    assert files and all(dep != "training" for p in files for _, dep in ddim_imports(p))


def test_the_check_sees_every_kind_of_import():
    """A plain, a from- and a function-local import, and a relative one resolved to its package."""
    source = "import ddim.cli\nfrom ddim.training import x\ndef f():\n    from .ddim import y\n"
    probe = SRC / "samplers" / "probe.py"
    assert ddim_imports(probe, source) == [(1, "cli"), (2, "training"), (4, "samplers")]
