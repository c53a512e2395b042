"""The package's own promises: no Streamlit in the core, no TensorFlow at import time."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from tests.conftest import PROJECT


def test_core_never_imports_streamlit() -> None:
    offenders = [p.name for p in (PROJECT / "medimg").rglob("*.py") if "import streamlit" in p.read_text()]
    assert offenders == []


# The layers, bottom first: a module may import its own layer and those below it, never one above. The foundation
# (errors, config) and the top (workflows, auto, jobs, export, tracking, cli) are modules at the package's root;
# every other layer is a folder of medimg/ (medimg/README.md).
FOUNDATION = ("errors", "config")
LAYERS = ("imaging", "datasets", "store", "metrics", "model", "results")


def layer(module: str) -> int:
    """0 for the foundation, 1.. for the folders in LAYERS order, len(LAYERS) + 1 for the root's other modules."""
    if module in FOUNDATION:
        return 0
    folder = module.split(".")[0]
    return LAYERS.index(folder) + 1 if folder in LAYERS else len(LAYERS) + 1


def medimg_imports() -> dict[str, set[str]]:
    """Module ("imaging.images", "jobs") → the medimg modules it imports, at module level or inside functions."""
    base = PROJECT / "medimg"
    modules = {
        ".".join(path.relative_to(base).with_suffix("").parts): path
        for path in base.rglob("*.py")
        if path.name != "__init__.py"
    }

    def resolve(dotted: str) -> str | None:  # "imaging.images.load_image" → "imaging.images"
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in modules:
                return ".".join(parts[:end])
        return None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            found: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medimg":
                inside = node.module.removeprefix("medimg").lstrip(".")
                found = [f"{inside}.{a.name}".lstrip(".") for a in node.names] + ([inside] if inside else [])
            elif isinstance(node, ast.Import):
                found = [a.name.removeprefix("medimg.") for a in node.names if a.name.startswith("medimg.")]
            graph[name] |= {target for target in map(resolve, found) if target and target != name}
    return graph


def test_imports_point_down_the_layers_only() -> None:
    graph = medimg_imports()
    # The walk sees function-level imports too (jobs imports workflows inside `execute`).
    assert "imaging.dicom" in graph["imaging.images"] and "workflows" in graph["jobs"]
    assert {layer(name) for name in graph} == set(range(len(LAYERS) + 2)), "every layer holds a module"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a))
    assert upward == []


def test_medimg_modules_import_each_other_without_cycles() -> None:
    graph = medimg_imports()

    def path_back(start: str, node: str, seen: set[str]) -> list[str] | None:
        for target in sorted(graph[node]):
            if target == start:
                return [node, start]
            if target not in seen:
                seen.add(target)
                rest = path_back(start, target, seen)
                if rest:
                    return [node, *rest]
        return None

    cycles = {name: path_back(name, name, set()) for name in graph}
    assert {name: cycle for name, cycle in cycles.items() if cycle} == {}


def test_every_module_lives_in_a_layer_folder_or_is_a_named_root_module() -> None:
    roots = {p.stem for p in (PROJECT / "medimg").glob("*.py")} - {"__init__", "__main__"}
    assert roots == {*FOUNDATION, "workflows", "auto", "jobs", "export", "tracking", "cli"}
    folders = {p.name for p in (PROJECT / "medimg").iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(LAYERS)


def test_import_medimg_does_not_load_tensorflow_or_streamlit() -> None:
    code = (
        "import sys, medimg, medimg.config, medimg.datasets.dataset, medimg.store.runs, medimg.jobs,"
        " medimg.results.charts, medimg.imaging.images, medimg.imaging.contract;"
        "print(sorted(m for m in ('tensorflow', 'keras', 'streamlit', 'keras_tuner') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_pages_that_do_not_train_never_import_tensorflow(tmp_path) -> None:
    # Each page is rendered in a fresh interpreter (AppTest), then we look at what got imported.
    code = f"""
import sys
from streamlit.testing.v1 import AppTest
loaded = {{}}
for page in ("dataset", "runs", "tune", "train"):
    at = AppTest.from_file({str(PROJECT / "app.py")!r}, default_timeout=60)
    at.run()
    at.switch_page(f"pages/{{page}}.py").run()
    assert not at.exception, (page, at.exception)
    loaded[page] = sorted(m for m in ("tensorflow", "keras", "keras_tuner") if m in sys.modules)
print(loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MEDIMG_RUNS_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str({p: [] for p in ("dataset", "runs", "tune", "train")})
