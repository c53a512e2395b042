"""The package's own promises: no Streamlit in the core, no TensorFlow at import time."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PROJECT


def test_core_never_imports_streamlit() -> None:
    offenders = [p.name for p in (PROJECT / "medimg").rglob("*.py") if "import streamlit" in p.read_text()]
    assert offenders == []


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
