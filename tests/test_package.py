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


def medimg_imports() -> dict[str, set[str]]:
    """Module → the medimg modules it imports, at module level or inside functions."""
    modules = {path.stem: path for path in (PROJECT / "medimg").glob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "medimg":
                graph[name] |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medimg."):
                graph[name].add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name.split(".")[1] for a in node.names if a.name.startswith("medimg.")}
        graph[name] = {target for target in graph[name] if target in modules and target != name}
    return graph


def test_medimg_modules_import_each_other_without_cycles() -> None:
    graph = medimg_imports()
    assert "dicom" in graph["images"] and "training" in graph["jobs"]  # the walk sees function-level imports

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


def test_import_medimg_does_not_load_tensorflow_or_streamlit() -> None:
    code = (
        "import sys, medimg, medimg.config, medimg.dataset, medimg.runs, medimg.jobs, medimg.charts, medimg.images;"
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
