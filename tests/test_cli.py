"""The command line end to end on the bundled real demo data: scan → tune → train → evaluate → predict → runs."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DEMO, PROJECT


def medimg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "medimg", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"medimg {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def test_scan_json_contract() -> None:
    report = json.loads(medimg("scan", str(DEMO), "--json").stdout)
    assert report["classes"] == {"NORMAL": 70, "PNEUMONIA": 70}
    assert report["splits"]["train"] == {"NORMAL": 40, "PNEUMONIA": 40}
    assert report["splits"]["test"] == {"NORMAL": 15, "PNEUMONIA": 15}
    assert report["unreadable"] == []
    assert report["layout"] == "split_folders"


def test_scan_missing_folder_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = medimg("scan", str(tmp_path / "nope"), check=False)
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["auto", "tune", "train"])
def test_a_run_on_a_missing_folder_is_refused_before_a_run_folder_is_made(tmp_path: Path, command: str) -> None:
    """Seen: `tune /tmp/nope` printed the error and left a failed run that the Tune page then opened on."""
    result = medimg(command, str(tmp_path / "nope"), "--runs", str(tmp_path / "runs"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"dataset path {tmp_path / 'nope'} does not exist" in result.stderr
    assert result.stdout == "" and not (tmp_path / "runs").exists()
    # Answered before TensorFlow's seconds of start-up.
    script = (
        "import sys\nfrom medimg import cli\n"
        f"code = cli.main([{command!r}, {str(tmp_path / 'nope')!r}, '--runs', {str(tmp_path / 'runs')!r}])\n"
        "print(code, 'tensorflow' in sys.modules)\n"
    )
    checked = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert checked.stdout.split() == ["2", "False"], checked.stderr


@pytest.mark.parametrize("command", ["tune", "train"])
def test_a_run_on_a_one_class_folder_is_refused_before_a_run_folder_is_made(tmp_path: Path, command: str) -> None:
    """Seen in review: `tune` on a folder with one class folder failed after making a run, left behind."""
    data = tmp_path / "data"
    shutil.copytree(DEMO / "train" / "NORMAL", data / "NORMAL")
    result = medimg(command, str(data), "--runs", str(tmp_path / "runs"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{data} has only the class 'NORMAL'; a classifier needs at least two classes" in result.stderr
    assert result.stdout == "" and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_tune_train_evaluate_predict_end_to_end(tmp_path: Path) -> None:
    runs = str(tmp_path / "runs")
    common = ["--runs", runs, "--image-size", "32", "--color", "gray", "--seed", "7"]
    tune = medimg("tune", str(DEMO), *common, "--max-trials", "2", "--epochs", "1", "--tuner", "random")
    tune_dir = Path(tune.stdout.strip().splitlines()[-1])
    record = json.loads((tune_dir / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["trials_completed"] == 2
    assert (tune_dir / "tuner").is_dir() and (tune_dir / "model.keras").is_file()

    train = medimg("train", *common, "--from-run", str(tune_dir), "--epochs", "2")
    train_dir = Path(train.stdout.strip().splitlines()[-1])
    trained = json.loads((train_dir / "run.json").read_text())
    assert trained["status"] == "completed"
    assert trained["spec"]["params"] == record["best_params"]
    history = json.loads((train_dir / "history.json").read_text())
    assert history["epoch"] == [1, 2] and len(history["val_auc"]) == 2

    metrics = json.loads(medimg("evaluate", str(train_dir), "--json").stdout)
    assert set(metrics) >= {"accuracy", "balanced_accuracy", "auc", "per_class"}
    assert set(metrics["per_class"]) == {"NORMAL", "PNEUMONIA"}
    assert sum(map(sum, metrics["confusion_matrix"])) == 30

    images = sorted((DEMO / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    predicted = medimg("predict", str(train_dir), *map(str, images), str(bad))
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    assert len(rows) == 4
    for row in rows[:3]:
        assert row["predicted"] in ("NORMAL", "PNEUMONIA")
        assert abs(float(row["p_NORMAL"]) + float(row["p_PNEUMONIA"]) - 1) < 1e-4
    assert "not an image" in rows[3]["error"]
    assert "called: " in predicted.stderr  # the decision rule the calls were made by
    folder = medimg("predict", str(train_dir), str(DEMO / "test" / "NORMAL"))  # a folder: every file under it
    assert len(list(csv.DictReader(io.StringIO(folder.stdout)))) == len(list((DEMO / "test" / "NORMAL").glob("*")))

    listing = json.loads(medimg("runs", "--runs", runs, "--json").stdout)
    assert {row["id"] for row in listing} == {tune_dir.name, train_dir.name}
    assert all(row["status"] == "completed" for row in listing)


def test_unicode_class_folders_end_to_end_with_the_unusable_ones_left_out(tmp_path: Path) -> None:
    case = PROJECT / "tests" / "data" / "cases" / "class-folder-names"
    runs = str(tmp_path / "runs")
    scanned = medimg("scan", str(case))
    left_out = [
        "class folder 'Artefact' holds only unreadable files (1): left out of training",
        "class folder 'COVID-19' holds no image file: left out of training",
    ]
    assert all(line in scanned.stdout for line in left_out)
    params = '{"filters": [4], "dense_units": 8, "batch_size": 8}'
    train = medimg("train", str(case), "--runs", runs, "--image-size", "16", "--epochs", "1", "--params", params)
    assert all(line in train.stdout + train.stderr for line in left_out)  # said again when training starts
    run_dir = Path(train.stdout.strip().splitlines()[-1])
    record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    names = ["Neumonía viral", "Normal (sano)", "结节 nodule"]
    assert record["status"] == "completed" and record["class_names"] == names
    metrics = json.loads(medimg("evaluate", str(run_dir), "--json").stdout)
    assert list(metrics["per_class"]) == names
    medimg("report", str(run_dir))
    assert "结节 nodule" in (run_dir / "report.html").read_text(encoding="utf-8")
    files = [next((case / name).glob("*.png")) for name in ("结节 nodule", "Artefact")]
    rows = list(csv.DictReader(io.StringIO(medimg("predict", str(run_dir), *map(str, files)).stdout)))
    assert [row["file"] for row in rows] == [str(f) for f in files]
    assert {f"p_{name}" for name in names} <= set(rows[0]) and rows[0]["predicted"] in names
    assert rows[1]["error"].startswith("not an image")


def test_a_background_train_names_its_process_and_completes(tmp_path: Path) -> None:
    from medimg.store import runs

    params = '{"filters": [4], "dense_units": 8, "batch_size": 16}'
    started = medimg(
        "train",
        str(DEMO),
        "--runs",
        str(tmp_path),
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--params",
        params,
        "--background",
    )
    run = runs.Run(Path(started.stdout.strip().splitlines()[-1]))
    said = started.stderr.strip().splitlines()[-1]
    assert said.startswith(f"started {run.id} in the background (pid {run.launched_pid()});"), said
    deadline = time.time() + 240
    while run.status in runs.ACTIVE_STATUSES and time.time() < deadline:
        time.sleep(0.5)
    assert run.record["status"] == "completed", (run.path / "log.txt").read_text()[-2000:]


def test_runs_lists_what_the_runs_page_shows_with_why_a_run_failed(tmp_path: Path) -> None:
    from medimg.config import DatasetConfig, RunSpec
    from medimg.store import runs

    failed = runs.create_run(RunSpec(kind="train", dataset=DatasetConfig(path=str(DEMO))), tmp_path)
    failed.set_status("failed", error="the loss became NaN at epoch 3; no epoch finished before it")
    header, line = medimg("runs", "--runs", str(tmp_path)).stdout.splitlines()
    assert header.split() == " ".join(failed.table_row()).split()  # the Runs page's columns, in its order
    assert line.startswith(failed.id) and str(DEMO) in line
    assert line.endswith("the loss became NaN at epoch 3; no epoch finished before it")


def test_flags_override_the_spec_file_which_overrides_the_preset(tmp_path: Path) -> None:
    from medimg.auto import BUDGET_MAX_TRIALS
    from medimg.cli import build_parser, build_spec
    from medimg.config import PRESETS, TuneConfig
    from medimg.datasets.sources import DEMO_GROUP_REGEX

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps({"dataset": {"merge_label_case": True, "image_size": 32}, "tune": {"tuner": "bayesian"}})
    )
    parse = build_parser().parse_args
    spec = build_spec(
        parse(["tune", "--spec", str(spec_file), "--image-size", "24", "--backbone", "cnn, densenet121"]), "tune"
    )
    assert spec.dataset.image_size == 24 and spec.dataset.merge_label_case  # a switch not given keeps the file's
    assert spec.tune.tuner == "bayesian" and spec.search.backbones == ("cnn", "densenet121")
    assert spec.tune.max_trials == TuneConfig().max_trials  # the file's tune section replaces the preset's
    assert build_spec(parse(["tune"]), "tune").tune.max_trials == PRESETS["quick"].max_trials  # no file: the preset
    # The bundled demo brings its patient IDs, given or not (its file names follow a known convention); a folder
    # whose names follow none gets the user's pattern or none, and an emptied pattern is honoured.
    assert build_spec(parse(["tune"]), "tune").dataset.group_regex == DEMO_GROUP_REGEX
    assert build_spec(parse(["train", str(tmp_path)]), "train").dataset.group_regex == ""
    assert build_spec(parse(["train", str(DEMO)]), "train").dataset.group_regex == DEMO_GROUP_REGEX
    assert build_spec(parse(["train", str(DEMO), "--group-regex", ""]), "train").dataset.group_regex == ""
    given = build_spec(parse(["train", "--group-regex", "^(p\\d+)_"]), "train").dataset.group_regex
    assert given == "^(p\\d+)_"
    # A time budget without a trial count: the budget ends the search, whatever the preset's trial count.
    assert build_spec(parse(["tune", "--max-minutes", "5"]), "tune").tune.max_trials == BUDGET_MAX_TRIALS
    assert build_spec(parse(["tune", "--max-minutes", "5", "--max-trials", "3"]), "tune").tune.max_trials == 3
    train = build_spec(
        parse(["train", "--fine-tune-blocks", "2", "--backbone", "densenet121", "--weights", "none"]), "train"
    )
    assert (train.params.backbone, train.params.fine_tune_blocks, train.params.weights) == ("densenet121", 2, "none")


def test_tune_resume_keeps_the_searchs_own_settings(tmp_path: Path) -> None:
    from medimg.config import AugmentConfig, DatasetConfig, RunSpec, SearchSpace, TrainConfig, TuneConfig
    from medimg.store import runs

    small = SearchSpace(conv_blocks=(1,), filters_min=4, filters_max=4, activations=("relu",), dropouts=(0.0,))
    spec = RunSpec(
        kind="tune",
        dataset=DatasetConfig(path=str(DEMO), image_size=16),
        augment=AugmentConfig(flip_horizontal=True, rotation=0.05),  # decides what a trial trains on: kept too
        search=small,
        tune=TuneConfig(max_trials=1),
        train=TrainConfig(epochs=1, early_stopping_patience=0, reduce_lr_patience=0),
    )
    run = runs.create_run(spec, tmp_path)
    run.set_status("stopped", message="stopped before it started")
    medimg("tune", "--resume", run.id, "--runs", str(tmp_path))
    assert run.record["status"] == "completed"
    assert run.spec == spec  # not the default preset's 4 trials of 10 epochs
    assert len(run.read_json("trials.json")) == 1


def test_evaluate_words_a_multi_class_run_and_warns_of_a_class_never_called(
    never_calling_run, capsys: pytest.CaptureFixture
) -> None:
    """RetinaMNIST's runs ended with "test (threshold 0.5 / arg-max): AUC …" and no word on grade 4, never called."""
    from medimg import cli

    assert cli.main(["evaluate", str(never_calling_run.path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    metrics = never_calling_run.read_json("metrics.json")
    validation = metrics["validation"]
    assert lines[1] == (
        f"validation, the saved model (the split it was chosen on): AUC {validation['auc']:.4f}  accuracy "
        f"{validation['accuracy']:.4f}  log loss {validation['loss']:.4f}"
    )
    assert lines[2].startswith(f"test (arg-max over 3 classes): macro AUC {metrics['auc']:.4f}  accuracy ")
    warning = "WARNING: The model never calls VIRUS on the test split: its sensitivity is 0 by construction"
    assert any(line.startswith(warning) for line in lines)
    # The lines after `auto`, `tune` and `train` are the same function's, on the same metrics.
    assert cli.format_test_metrics(metrics) == lines[2 : 2 + len(cli.format_test_metrics(metrics))]
    assert cli.main(["evaluate", str(never_calling_run.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["never_predicted"] == ["VIRUS"]


@pytest.mark.parametrize("flag", [["--threshold", "0.3"], ["--positive", "b"]])
def test_report_refuses_a_threshold_for_a_model_of_more_than_two_classes(tmp_path: Path, flag: list[str]) -> None:
    """Seen in review: `report RUN --threshold 0.3` on a five-class run wrote the same report as without it."""
    from medimg.config import DatasetConfig, RunSpec
    from medimg.store import runs

    run = runs.create_run(RunSpec(kind="train", dataset=DatasetConfig(path=str(DEMO))), tmp_path / "runs")
    run.update(status="completed", class_names=["a", "b", "c"])
    result = medimg("report", str(run.path), *flag, "--out", str(tmp_path / "r.html"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{flag[0]} applies to a two-class model; run {run.id} has 3 classes, called by the arg-max" in result.stderr
    assert not (tmp_path / "r.html").exists()
