"""The package's own promises: no Streamlit in the core, no TensorFlow at import time."""

from __future__ import annotations

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
