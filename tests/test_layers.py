"""The package's layers: imports point down the data flow, and there is no import circle.

Reads every module of ``src/flairkit`` with ``ast`` (imports inside functions included, since a
lazy upward import is still an upward dependency), maps it to a layer and checks each
``flairkit`` import against what that layer may use. A second check finds import circles
between modules (Tarjan's strongly connected components), counting the package ``__init__``
a dotted import runs. Subprocess checks then prove the lowest layers load without torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Module (or package prefix) -> layer. Longest prefix wins.
LAYER_OF = {
    "flairkit": "base",  # the package __init__ (version)
    "flairkit.modalities": "base",
    "flairkit.sample": "base",
    "flairkit.presets": "base",
    "flairkit.model_ref": "base",
    "flairkit.hub": "base",
    "flairkit.safe_load": "base",
    "flairkit.memory": "base",
    "flairkit.config": "base",
    "flairkit.io": "io",
    "flairkit.transforms": "transforms",
    "flairkit.data": "data",
    "flairkit.metrics": "metrics",
    "flairkit.reports": "metrics",
    "flairkit.models": "models",
    "flairkit.checkpoint": "checkpoint",
    "flairkit.inference": "inference",
    "flairkit.training": "training",
    "flairkit.synth": "tools",
    "flairkit.synth_zone": "tools",
    "flairkit.download": "tools",
    "flairkit.check": "tools",
    "flairkit.check_files": "tools",
    "flairkit.show": "tools",
    "flairkit.cli": "cli",
    "flairkit.__main__": "cli",
}

#: Layer -> the layers its modules may import (besides their own).
MAY_IMPORT = {
    "base": set(),
    "io": {"base"},
    "transforms": {"base", "io"},
    "data": {"base", "io", "transforms"},
    "metrics": {"base"},
    "models": {"base"},
    "checkpoint": {"base", "models"},
    "inference": {"base", "io", "transforms", "models", "checkpoint"},
    "training": {"base", "io", "transforms", "data", "metrics", "models", "checkpoint"},
    "tools": {"base", "io", "transforms", "metrics"},
    "cli": set(LAYER_OF.values()),
}

#: Third-party packages only some layers may import (Lightning only where it trains).
RESTRICTED = {
    # cli: only to recognise Lightning's configuration errors, when Lightning is already loaded
    "lightning": {"training", "data.datamodule", "cli"},
    "torchmetrics": {"training"},
    "tensorboard": {"training"},
}

#: Inside the base layer the order matters too: config reads presets, not the reverse, and
#: neither reaches the pipeline types.
BASE_MAY_IMPORT = {
    "flairkit": set(),
    "flairkit.modalities": set(),
    "flairkit.safe_load": set(),
    "flairkit.memory": set(),
    "flairkit.sample": {"flairkit.modalities"},
    "flairkit.presets": {"flairkit.modalities"},
    "flairkit.model_ref": {"flairkit.presets"},
    "flairkit.hub": {"flairkit.model_ref"},
    "flairkit.config": {
        "flairkit.modalities",
        "flairkit.presets",
        "flairkit.config",
        "flairkit.model_ref",
    },
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len)
    return LAYER_OF[best]


def imports_of(path: Path) -> set[str]:
    """Every module this file imports (``from a.b import c`` counts as a.b, and a.b.c if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    """Module -> the flairkit modules it imports (only names that are real modules)."""
    files = {module_name(p): p for p in SRC.joinpath("flairkit").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = {d for d in imports_of(path) if d in files and d != name}
        graph[name] = deps
    return graph


def third_party_of(path: Path) -> set[str]:
    return {d.split(".")[0] for d in imports_of(path) if d and not d.startswith("flairkit")}


def with_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Add the edges Python runs: importing a.b.c first runs a/__init__ and a/b/__init__."""
    out = {m: set(d) for m, d in graph.items()}
    for module, deps in graph.items():
        for dep in deps:
            parts = dep.split(".")
            for i in range(1, len(parts)):
                pkg = ".".join(parts[:i])
                # A module inside the package is imported while that package initialises.
                if pkg in graph and not module.startswith(pkg + ".") and pkg != module:
                    out[module].add(pkg)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        layer = layer_of(module)
        for dep in sorted(deps):
            dep_layer = layer_of(dep)
            if dep_layer == layer:
                if layer == "base":
                    key = max(
                        (p for p in BASE_MAY_IMPORT if module == p or module.startswith(p + ".")),
                        key=len,
                    )
                    if (
                        dep_layer == "base"
                        and dep != "flairkit"
                        and not any(
                            dep == a or dep.startswith(a + ".") for a in BASE_MAY_IMPORT[key]
                        )
                    ):
                        bad.append(f"{module} ({layer}) imports {dep}")
                continue
            if dep == "flairkit":  # the package itself (its version) is the bottom
                continue
            if dep_layer not in MAY_IMPORT[layer]:
                bad.append(f"{module} ({layer}) imports {dep} ({dep_layer})")
    return bad


def test_every_module_has_a_layer():
    missing = [
        m for m in project_graph() if not any(m == p or m.startswith(p + ".") for p in LAYER_OF)
    ]
    assert not missing


def test_imports_point_down():
    assert upward_imports(project_graph()) == []


def test_no_import_circle():
    assert cycles(with_package_inits(project_graph())) == []


def test_training_libraries_only_where_training_happens():
    bad = []
    for path in SRC.joinpath("flairkit").rglob("*.py"):
        module = module_name(path)
        relative = module.removeprefix("flairkit.")
        for lib in third_party_of(path) & set(RESTRICTED):
            if not any(relative == a or relative.startswith(a + ".") for a in RESTRICTED[lib]):
                bad.append(f"{module} imports {lib}")
    assert bad == []


def test_checks_catch_what_they_claim():
    """The checks themselves fail on an upward import and on a circle."""
    graph = {"flairkit.io.patches": {"flairkit.models.build"}, "flairkit.models.build": set()}
    assert upward_imports(graph) == [
        "flairkit.io.patches (io) imports flairkit.models.build (models)"
    ]
    base = {"flairkit.config.recipe": {"flairkit.sample"}, "flairkit.sample": set()}
    assert upward_imports(base) == ["flairkit.config.recipe (base) imports flairkit.sample"]
    circle = {
        "flairkit.config.recipe": {"flairkit.models.presets"},
        "flairkit.models.presets": {"flairkit.config"},
        "flairkit.config": {"flairkit.config.recipe"},
    }
    assert cycles(circle) == [
        ["flairkit.config", "flairkit.config.recipe", "flairkit.models.presets"]
    ]
    # a dotted import runs the package __init__: config.x -> models.y -> config (__init__) -> config.x
    dotted = {
        "flairkit.config": {"flairkit.config.recipe"},
        "flairkit.config.recipe": {"flairkit.models.presets"},
        "flairkit.models": set(),
        "flairkit.models.presets": {"flairkit.config.convert"},
        "flairkit.config.convert": set(),
    }
    assert cycles(dotted) == []
    assert cycles(with_package_inits(dotted)) == [
        ["flairkit.config", "flairkit.config.recipe", "flairkit.models.presets"]
    ]


@pytest.mark.parametrize(
    "module",
    [
        "flairkit.config",
        "flairkit.presets",
        "flairkit.model_ref",
        "flairkit.hub",
        "flairkit.sample",
        "flairkit.io.patches",
        "flairkit.io.catalog",
        "flairkit.io.windows",
        "flairkit.io.writers",
        "flairkit.check",
        "flairkit.synth",
    ],
)
def test_low_layers_load_without_torch(module):
    code = (
        f"import sys, {module}\n"
        "heavy = [m for m in ('torch', 'lightning', 'timm', 'flairkit.models') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
