"""Page-test fixtures: an AppTest on the real app.py, an isolated runs folder, real finished runs, no stray processes.

Every page test drives the multipage app the way a browser session does (`AppTest.from_file(app.py)`, then
`switch_page`). Runs are made by the real engine (`medimg.jobs.execute` in this process, or `medimg.jobs.launch`
from a page), never by writing run files by hand.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.util import patch_config_options

from medimg.config import SearchSpace
from medimg.datasets.sources import DEMO_GROUP_REGEX
from tests.conftest import DEMO, PROJECT

APP = PROJECT / "app.py"
# Pages that load TensorFlow or a model need more than AppTest's default 3 s on 2 cores.
TIMEOUT = 90
# The demo as the Dataset page sets it (app.py opens that page first): with the patient IDs it brings.
TINY_DATASET = {"path": str(DEMO), "image_size": 16, "group_regex": DEMO_GROUP_REGEX}
TINY_SEARCH = SearchSpace(
    conv_blocks=(1,),
    filters_min=8,
    filters_max=16,
    filters_step=8,
    activations=("relu",),
    dropouts=(0.0,),
    dense_units=(8,),
)


@dataclasses.dataclass(frozen=True)
class FinishedRuns:
    """A runs folder holding one completed train run and one completed tune run, both made by the engine."""

    root: Path
    train_id: str
    tune_id: str


# ---------------------------------------------------------------------------------------------------------- helpers
def run_picker(at: AppTest, key: str):
    """A page's run selectbox: its key is `key` plus a digest of its labels (redrawn when a run's status changes)."""
    (picker,) = [box for box in at.selectbox if str(box.key).startswith(f"{key}-")]
    return picker


def open_page(page: str, run: str | None = None, **state: Any) -> AppTest:
    """A fresh browser session: app.py (URL `?run=<run>`, `state` preset), then the page `pages/<page>.py`.

    Also how a test redraws a page that watches a live run: the run pickers label runs with their live status, and
    AppTest cannot replay a selectbox whose option labels changed since it was drawn, so a redraw is a page refresh
    (which the pages support on purpose: the URL reattaches to the run).
    """
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if run:
        at.query_params["run"] = run
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert [title.value for title in at.title] == [page.capitalize()], "the page did not open"
    return at


def damaged_run(root: Path, run_id: str) -> Path:
    """A run folder whose run.json was cut short (disk full, a killed editor). Written by hand on purpose: the
    engine writes run files atomically and never leaves one like this."""
    folder = root / run_id
    folder.mkdir()
    (folder / "run.json").write_text(f'{{"id": "{run_id}", "spec": {{')
    return folder


def values(elements: Any) -> list[str]:
    return [element.value for element in elements]


def by_label(elements: Any, label: str) -> Any:
    """The one widget with this label (most page widgets have no key)."""
    matches = [element for element in elements if element.label == label]
    assert len(matches) == 1, f"expected one widget labelled {label!r}; found {[e.label for e in elements]}"
    return matches[0]


def charts(at: AppTest) -> dict[str, dict[str, Any]]:
    """Plotly charts on the page by key, each as its figure JSON."""
    return {element.key: json.loads(element.proto.spec) for element in at.get("plotly_chart")}


def no_exception(at: AppTest) -> None:
    assert not at.exception, "\n".join(values(at.exception))


def wait_for(condition: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.time() + seconds
    while time.time() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def kill_run_processes(root: Path) -> None:
    """Kill the process group of every run under `root` whose process is still alive, and wait until it is gone."""
    from medimg.store import runs

    for run in runs.list_runs(root):
        try:
            pid = run.pid
        except Exception:
            continue
        if not pid or pid == os.getpid() or not runs.pid_alive(pid):
            continue
        try:
            os.killpg(pid, signal.SIGKILL)  # launched with start_new_session: the group id is the pid
        except ProcessLookupError:
            continue
        wait_for(lambda pid=pid: not runs.pid_alive(pid), 20, f"run process {pid} to exit")


# --------------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True)
def error_details() -> Iterator[None]:
    """The project's config hides exception details from users; a failing test should name the exception."""
    with patch_config_options({"client.showErrorDetails": "full"}):
        yield


@pytest.fixture(autouse=True)
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets an empty runs folder, no data roots, the default run limit and a private temp folder."""
    root = tmp_path / "runs"
    monkeypatch.setenv("MEDIMG_RUNS_DIR", str(root))
    monkeypatch.delenv("MEDIMG_DATA_ROOTS", raising=False)
    monkeypatch.delenv("MEDIMG_MAX_CONCURRENT_RUNS", raising=False)
    monkeypatch.chdir(PROJECT)  # a launched run starts `python -m medimg` in the current folder
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # extracted zip uploads land here
    yield root
    kill_run_processes(root)


@pytest.fixture(scope="session")
def engine_runs(tmp_path_factory: pytest.TempPathFactory, isolated_cache: Path) -> FinishedRuns:
    """One tiny train run and one tiny tune run on the demo data, carried out by the real engine (about 10 s)."""
    from medimg import jobs
    from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig, TuneConfig
    from medimg.store import runs

    root = tmp_path_factory.mktemp("finished-runs")
    dataset = DatasetConfig(**TINY_DATASET)
    train = runs.create_run(
        RunSpec(
            kind="train",
            dataset=dataset,
            train=TrainConfig(epochs=1),
            params=ModelParams(filters=(8,), dense_units=8),
        ),
        root,
    )
    jobs.execute(train)
    space = TINY_SEARCH
    tune = runs.create_run(
        RunSpec(kind="tune", dataset=dataset, train=TrainConfig(epochs=1), search=space, tune=TuneConfig(max_trials=1)),
        root,
    )
    jobs.execute(tune)
    assert train.status == "completed" and tune.status == "completed"
    return FinishedRuns(root, train.id, tune.id)


@pytest.fixture()
def finished_runs(engine_runs: FinishedRuns, runs_dir: Path) -> FinishedRuns:
    """A private copy of the finished runs as this test's runs folder, so a test may delete or damage them."""
    shutil.copytree(engine_runs.root, runs_dir)
    return FinishedRuns(runs_dir, engine_runs.train_id, engine_runs.tune_id)
