"""Exports (ONNX, LiteRT, SavedModel, .keras) of a real tiny run, checked in each format's own runtime; MLflow
tracking into a temporary sqlite store, read back with mlflow.search_runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medimg import export, jobs, tracking
from medimg.cli import main
from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig, TuneConfig
from medimg.datasets.prepared import prepare_data
from medimg.errors import ConfigError, RunError
from medimg.model.models import load_run_model
from medimg.store import runs
from tests.conftest import DEMO, PROJECT
from tests.model.test_tuning import TINY_SPACE

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

REQUESTS = [("onnx", None), ("litert", None), ("saved_model", None), ("keras", None)]
QUANTISED = [("litert", "float16"), ("litert", "int8")]
DEMO_IMAGE = sorted((DEMO / "test" / "PNEUMONIA").glob("*.jpeg"))[0]


def tiny_spec(kind: str = "train") -> RunSpec:
    return RunSpec(
        kind=kind,
        dataset=DatasetConfig(path=str(DEMO), image_size=16, color="gray"),
        params=ModelParams(filters=(4, 8), dense_units=8, batch_size=16),
        train=TrainConfig(epochs=2, early_stopping_patience=0, reduce_lr_patience=0),
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> runs.Run:
    run = runs.create_run(tiny_spec(), tmp_path_factory.mktemp("runs"))
    jobs.execute(run)
    assert run.record["status"] == "completed"
    return run


@pytest.fixture(scope="module")
def exports(trained_run: runs.Run, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("exports")
    return {request: export.export_run(trained_run, request[0], out, request[1]) for request in REQUESTS + QUANTISED}


@pytest.fixture(scope="module")
def test_images(trained_run: runs.Run) -> tuple[np.ndarray, np.ndarray]:
    """The run's test images (N×16×16×1, 0..255 float32) and the Keras model's p(PNEUMONIA) for them."""
    images = np.asarray(prepare_data(trained_run.spec.dataset).arrays["test"].images, np.float32)
    return images, np.asarray(load_run_model(trained_run)(images, training=False))[:, 0]


def run_in_own_runtime(fmt: str, folder: Path, images: np.ndarray) -> np.ndarray:
    """p(second class) from the export, loaded here with the format's runtime directly (not medimg's loaders)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": images})[0][:, 0]
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(folder / "model.tflite"))
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, images)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[:, 0]
    if fmt == "saved_model":
        import tensorflow as tf

        serving = tf.saved_model.load(str(folder / "saved_model")).signatures["serving_default"]
        return next(iter(serving(image=tf.constant(images)).values())).numpy()[:, 0]
    import keras

    return np.asarray(keras.saving.load_model(folder / "model.keras", compile=False)(images))[:, 0]


@pytest.mark.parametrize("request_", REQUESTS + QUANTISED, ids=lambda r: "-".join(filter(None, r)))
def test_every_export_agrees_with_keras_in_its_own_runtime(exports: dict, test_images: tuple, request_: tuple) -> None:
    result = exports[request_]
    fmt, quantize = request_
    images, expected = test_images
    actual = run_in_own_runtime(fmt, result.path, images)
    assert actual.shape == expected.shape == (30,)
    assert np.max(np.abs(actual - expected)) <= export.TOLERANCES[quantize]
    assert result.max_abs_diff <= result.tolerance == export.TOLERANCES[quantize]
    assert sorted(p.name for p in result.path.iterdir()) == sorted(
        ["contract.json", "export.json", "image_profile.json", f"predict_{fmt}.py", export.MODEL_FILES[fmt]]
    )
    metadata = json.loads((result.path / "export.json").read_text())
    assert metadata["parity"]["max_abs_diff"] == result.max_abs_diff and metadata["parity"]["images"] == 30
    assert (metadata["format"], metadata["quantize"]) == (fmt, quantize)


def test_float32_exports_match_to_a_ten_thousandth_and_quantised_ones_within_their_stated_tolerance(
    exports: dict,
) -> None:
    for request in REQUESTS:
        assert exports[request].max_abs_diff <= 1e-4
    float16, int8 = exports[QUANTISED[0]], exports[QUANTISED[1]]
    assert 0 < float16.max_abs_diff <= 1e-2 and 0 < int8.max_abs_diff <= 5e-2  # really quantised, still close


def test_contract_carries_the_runs_input_and_decision_rule(trained_run: runs.Run, exports: dict) -> None:
    contract = json.loads((exports[("onnx", None)].path / "contract.json").read_text())
    point = trained_run.record["metrics"]["operating_point"]
    assert (contract["image_size"], contract["color"], contract["channels"]) == (16, "gray", 1)
    assert contract["class_names"] == ["NORMAL", "PNEUMONIA"] and contract["dicom_window"] is None
    assert contract["positive_class"] == "PNEUMONIA" and contract["threshold"] == pytest.approx(point["threshold"])
    assert (contract["model_file"], contract["format"], contract["input_dtype"]) == ("model.onnx", "onnx", "float32")
    onnx_file = exports[("onnx", None)].path / "model.onnx"
    assert contract["model_sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()  # the file beside it
    assert contract["source_model_sha256"] == trained_run.record["model_sha256"]
    # What the temperature is for, and the evaluation's verdict on it, travel with it.
    calibration = trained_run.read_json("metrics.json")["calibration"]
    assert contract["temperature"] == calibration.get("temperature")
    note = contract["temperature_note"]
    if calibration.get("temperature") is None:
        assert note.startswith("no temperature was fitted")
    else:
        assert note.startswith("The model outputs unscaled probabilities. temperature is T of temperature scaling")
        warning = calibration.get("warning")
        assert (bool(warning) and f"Not recommended here: {warning}" in note) == bool(warning)


def test_reference_scripts_predict_every_file_like_the_keras_model(
    trained_run: runs.Run, exports: dict, tmp_path: Path
) -> None:
    """Seen: a traceback on an unreadable file, and only the first of several files predicted."""
    from medimg.results.predict import Predictor

    colour = PROJECT / "tests" / "data" / "cases" / "jpeg-variants" / "imgs" / "cmyk.jpg"
    expected, unlike = Predictor(trained_run).predict([("x", DEMO_IMAGE), ("y", colour)])
    assert unlike.note.startswith("unlike the training images (a colour image")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    files = [str(DEMO_IMAGE), str(not_an_image), str(DEMO_IMAGE), str(colour)]
    processes = {
        fmt: subprocess.Popen(
            [sys.executable, str(exports[(fmt, None)].path / f"predict_{fmt}.py"), *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(PROJECT)},  # medimg importable, as for any user of the script
        )
        for fmt, _ in REQUESTS
    }
    for fmt, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 1 and "Traceback" not in stderr, (fmt, stderr[-1500:])  # 1: a file failed
        printed = [json.loads(line) for line in stdout.strip().splitlines()]
        assert [row["file"] for row in printed] == files, fmt
        for row in (printed[0], printed[2]):
            assert row["probabilities"] == pytest.approx(expected.probabilities, abs=1e-4), fmt
            assert row["called"] == expected.predicted, fmt
        assert "probabilities" not in printed[1] and printed[1]["error"], fmt
        # The Predict page's caution travels with the model: a colour photo unlike the gray training X-rays.
        assert printed[3]["note"] == unlike.note and "note" not in printed[0], fmt
        assert printed[3]["probabilities"] == pytest.approx(unlike.probabilities, abs=1e-4), fmt


def test_a_damaged_image_profile_costs_the_script_its_notes_not_its_predictions(exports: dict, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(exports[("onnx", None)].path, folder)
    (folder / "image_profile.json").write_text("{not json")
    process = subprocess.run(
        [sys.executable, str(folder / "predict_onnx.py"), str(DEMO_IMAGE)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
    )
    assert process.returncode == 0 and "Traceback" not in process.stderr, process.stderr[-1500:]
    (row,) = [json.loads(line) for line in process.stdout.strip().splitlines()]
    assert set(row) == {"file", "probabilities", "called"}


def test_a_reference_script_without_medimg_says_how_to_install_it(exports: dict, tmp_path: Path) -> None:
    """Seen: ModuleNotFoundError for a user who installed requirements.txt and ran the script from its folder."""
    folder = exports[("keras", None)].path
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.run(
        [sys.executable, str(folder / "predict_keras.py"), str(DEMO_IMAGE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout, whose folder would make medimg importable
        env=environment,
        timeout=120,
    )
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert f"pip install {PROJECT}" in process.stderr and "needs medimg for its preprocessing" in process.stderr
    # Installed from that checkout (its pyproject.toml; a copy, so the build leaves nothing in the checkout), the
    # same script predicts.
    source, target = tmp_path / "checkout", tmp_path / "site"
    shutil.copytree(PROJECT / "medimg", source / "medimg", ignore=shutil.ignore_patterns("__pycache__", "demo"))
    shutil.copy(PROJECT / "pyproject.toml", source)
    install = ["install", "--no-deps", "--no-build-isolation", "-q", "--target", str(target), str(source)]
    subprocess.run(
        [sys.executable, "-m", "pip", *install],
        check=True,
        timeout=300,
    )
    process = subprocess.run(
        [sys.executable, str(folder / "predict_keras.py"), str(DEMO_IMAGE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**environment, "PYTHONPATH": str(target)},
        timeout=120,
    )
    assert process.returncode == 0, process.stderr[-1500:]
    assert set(json.loads(process.stdout.strip().splitlines()[-1])["probabilities"]) == set(trained_names(folder))


def trained_names(folder: Path) -> list[str]:
    return json.loads((folder / "contract.json").read_text())["class_names"]


def test_cli_export_prints_the_folder_last_and_the_parity_figure(
    trained_run: runs.Run, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["export", str(trained_run.path), "--format", "keras", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(tmp_path / f"{trained_run.id}-keras")
    assert "max |p - p_keras| = 0.00e+00" in captured.err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--format", "onnx", "--quantize", "int8"], "format onnx cannot be quantised to 'int8'; only litert accepts"),
        (["--format", "keras", "--quantize", "float16"], "format keras cannot be quantised"),
    ],
)
def test_cli_refuses_a_quantisation_the_format_does_not_take(
    trained_run: runs.Run, tmp_path: Path, capsys: pytest.CaptureFixture, arguments: list, message: str
) -> None:
    assert main(["export", str(trained_run.path), "--out", str(tmp_path), *arguments]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_and_a_run_without_a_model_get_clear_messages(
    trained_run: runs.Run, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(ConfigError, match="unknown export format 'pmml'; choose one of onnx, litert"):
        export.export_run(trained_run, "pmml", tmp_path)
    untrained = runs.create_run(tiny_spec(), tmp_path / "runs")
    with pytest.raises(RunError, match="has no model yet"):
        export.export_run(untrained, "onnx", tmp_path)
    assert main(["export", str(untrained.path), "--format", "onnx", "--out", str(tmp_path / "out")]) == 2
    assert "has no model yet (status: queued); train it first." in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(trained_run.path), "--format", "pmml", "--out", str(tmp_path)])
    assert "invalid choice: 'pmml'" in capsys.readouterr().err


def test_an_export_beyond_its_tolerance_fails_with_the_figure_and_leaves_nothing(
    trained_run: runs.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(export.TOLERANCES, "int8", 1e-9)
    with pytest.raises(export.ParityError, match=r"differs from the Keras model by [0-9.e-]+ in probability on 30"):
        export.export_run(trained_run, "litert", tmp_path, "int8")
    assert list(tmp_path.iterdir()) == []


def test_export_zip_holds_the_folder(exports: dict) -> None:
    import io
    import zipfile

    result = exports[("litert", "int8")]
    names = zipfile.ZipFile(io.BytesIO(export.export_zip(result))).namelist()
    assert f"{result.path.name}/model.tflite" in names and f"{result.path.name}/contract.json" in names


# ------------------------------------------------------------------------------------------------------- MLflow
@pytest.mark.parametrize("command", ["tune", "train", "auto"])
def test_mlflow_flag_is_taken_by_the_commands_that_train(command: str) -> None:
    from medimg.cli import build_parser

    assert build_parser().parse_args([command, "--mlflow", "sqlite:///x.db"]).mlflow == "sqlite:///x.db"


def test_tracking_off_never_imports_mlflow(trained_run: runs.Run) -> None:
    code = (
        "import sys; from medimg import jobs, tracking; from medimg.store import runs;"
        f"print(tracking.after_run(runs.Run({str(trained_run.path)!r})), 'mlflow' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "None False", result.stderr[-1500:]


def test_train_and_tune_runs_are_logged_to_mlflow(
    trained_run: runs.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    train_id = tracking.log_run(trained_run, uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the tune run goes through the hook in jobs.execute
    spec = tiny_spec("tune").replace(search=TINY_SPACE, tune=TuneConfig(tuner="random", max_trials=2))
    spec = spec.replace(train=TrainConfig(epochs=1, early_stopping_patience=0, reduce_lr_patience=0))
    tune = runs.create_run(spec, tmp_path / "runs")
    jobs.execute(tune)
    tune_id = tune.record["mlflow"]["run_id"]

    mlflow.set_tracking_uri(uri)
    table = mlflow.search_runs(experiment_names=["medimg"], output_format="list")
    by_id = {r.info.run_id: r for r in table}
    train = by_id[train_id].data
    assert train.params["dataset.image_size"] == "16" and train.params["params.filters"] == "[4, 8]"
    assert train.tags["medimg.run_id"] == trained_run.id
    assert train.metrics["test_accuracy"] == pytest.approx(trained_run.record["metrics"]["accuracy"])
    history = mlflow.MlflowClient().get_metric_history(train_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(trained_run.read_json("history.json")["val_loss"][-1], rel=1e-6)
    trials = [r for r in table if r.data.tags.get("mlflow.parentRunId") == tune_id]
    assert len(trials) == 2 and all("score" in t.data.metrics and "learning_rate" in t.data.params for t in trials)
    assert by_id[tune_id].data.metrics["best_trial_score"] == pytest.approx(tune.record["best_score"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(train_id, "medimg")}
    assert artifacts == {"medimg/model.keras", "medimg/contract.json"}
    logged = mlflow.search_logged_models(experiment_ids=[by_id[train_id].info.experiment_id], output_format="list")
    model = next(m for m in logged if m.source_run_id == train_id)
    reloaded = mlflow.keras.load_model(model.model_uri)
    image = np.full((1, 16, 16, 1), 128.0, np.float32)
    assert np.asarray(reloaded(image)) == pytest.approx(np.asarray(load_run_model(trained_run)(image)), abs=1e-6)
