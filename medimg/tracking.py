"""Optional MLflow tracking of finished tune and train runs; off (and mlflow never imported) unless a URI is given.

On when $MLFLOW_TRACKING_URI is set (the CLI's `--mlflow URI` sets it). One MLflow run per medimg run, in the
experiment "medimg" (or $MLFLOW_EXPERIMENT_NAME): the run spec flattened as parameters, per-epoch metrics with their
epoch as step, each search trial as a nested run (its hyperparameters, score and epochs), the test metrics from
run.json as `test_*`, and the model: the Keras flavour with its signature (N×H×W×C float32 0..255 → probabilities)
plus model.keras and contract.json as plain artifacts under `medimg/`. A local store for trying it:
`MLFLOW_TRACKING_URI=sqlite:///mlruns.db`, browsed with `mlflow ui --backend-store-uri sqlite:///mlruns.db`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medimg.errors import MedimgError
from medimg.model.models import load_run_model, predict_arrays
from medimg.store.runs import Run

log = logging.getLogger(__name__)
URI_VARIABLE = "MLFLOW_TRACKING_URI"
EXPERIMENT = "medimg"
PARAM_LENGTH = 500  # MLflow's oldest servers cap a parameter value at 500 characters


class TrackingError(MedimgError):
    """MLflow tracking was asked for but could not be done (package missing, store unreachable)."""


def tracking_uri() -> str | None:
    """The MLflow tracking URI in force ($MLFLOW_TRACKING_URI), or None when tracking is off."""
    return os.environ.get(URI_VARIABLE) or None


def after_run(run: Run, echo: Callable[[str], None] | None = None) -> str | None:
    """The hook `jobs.execute` calls when a run has finished: log it when tracking is on.

    A tracking failure does not fail a trained run: it is logged, echoed, and kept in run.json as `mlflow.error`.
    Returns the MLflow run id, or None when tracking is off or failed.
    """
    uri = tracking_uri()
    if uri is None or run.record.get("status") != "completed":
        return None
    try:
        run_id = log_run(run, uri)
    except TrackingError as error:
        log.warning("MLflow: %s", error)
        if echo:
            echo(f"WARNING: MLflow tracking failed: {error}")
        run.update(mlflow={"tracking_uri": uri, "error": str(error)})
        return None
    run.update(mlflow={"tracking_uri": uri, "run_id": run_id})
    if echo:
        echo(f"logged to MLflow at {uri} (run {run_id})")
    return run_id


def log_run(run: Run, uri: str) -> str:
    """Log a finished medimg run to the MLflow store at `uri`; returns the MLflow run id.

    Raises TrackingError when mlflow is not installed or the store refuses the run (the cause is kept)."""
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as error:
        raise TrackingError(
            f"{URI_VARIABLE} is set to {uri} but mlflow is not installed; "
            "`pip install -r requirements-export.txt`, or unset the variable."
        ) from error
    try:
        mlflow.set_tracking_uri(uri)
        experiment_id = _experiment_id(mlflow, uri)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run.id, tags=_tags(run)) as parent:
            _log_body(mlflow, run)
            for trial in run.read_json("trials.json") or []:
                _log_trial(mlflow, run, trial, experiment_id)
            return parent.info.run_id
    except (MlflowException, OSError) as error:
        raise TrackingError(f"could not log run {run.id} to {uri}: {error}") from error


def _log_body(mlflow: Any, run: Run) -> None:
    record = run.record
    mlflow.log_params({k: _param(v) for k, v in flatten(record["spec"]).items()})
    if record.get("best_params"):
        mlflow.log_params({f"best.{k}": _param(v) for k, v in flatten(record["best_params"]).items()})
    _log_history(mlflow, run.epoch_history())
    mlflow.log_metrics({f"test_{k}": v for k, v in flatten(record.get("metrics") or {}).items() if _number(v)})
    if record.get("best_score") is not None:
        mlflow.log_metric("best_trial_score", float(record["best_score"]))
    if run.model_path.is_file():
        _log_model(mlflow, run)


def _log_trial(mlflow: Any, run: Run, trial: dict[str, Any], experiment_id: str) -> None:
    from medimg.store.runs import trial_number

    name = f"trial {trial_number(trial['trial_id'])}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True, tags={"medimg.trial": "1"}):
        values = {k: v for k, v in (trial.get("hyperparameters") or {}).items() if not k.startswith("tuner/")}
        mlflow.log_params({k: _param(v) for k, v in values.items()})
        mlflow.set_tags({"medimg.trial_id": str(trial["trial_id"]), "medimg.trial_status": str(trial.get("status"))})
        if _number(trial.get("score")):
            mlflow.log_metric("score", float(trial["score"]))
        _log_history(mlflow, run.epoch_history(str(trial["trial_id"])))


def _log_history(mlflow: Any, history: dict[str, list[float]]) -> None:
    for position, epoch in enumerate(history.get("epoch", [])):
        values = {name: series[position] for name, series in history.items() if name != "epoch"}
        mlflow.log_metrics({k: float(v) for k, v in values.items() if _number(v)}, step=int(epoch))


def _log_model(mlflow: Any, run: Run) -> None:
    """The Keras flavour with its signature, and the run's own model.keras with contract.json beside it."""
    import mlflow.keras as mlflow_keras
    import numpy as np
    from mlflow.models import infer_signature

    from medimg.results import bundle, predict

    positive, threshold = predict.decision_threshold(run.record)
    terms = bundle.contract(run, threshold, positive)
    model = load_run_model(run)
    example = np.zeros((1, terms["image_size"], terms["image_size"], terms["channels"]), np.float32)
    signature = infer_signature(example, predict_arrays(model, example.astype(np.uint8)))
    requirements = [f"keras=={_version('keras')}", f"tensorflow=={_version('tensorflow')}"]
    mlflow_keras.log_model(model, name="model", signature=signature, pip_requirements=requirements)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "contract.json"
        path.write_text(json.dumps(terms, indent=2), encoding="utf-8")
        mlflow.log_artifact(str(path), artifact_path="medimg")
    mlflow.log_artifact(str(run.model_path), artifact_path="medimg")


def _experiment_id(mlflow: Any, uri: str) -> str:
    """The experiment's id, created on first use; with a sqlite store its artifacts go beside the database file
    (`<db>.artifacts/`) rather than into ./mlruns of whatever folder the process started in."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = Path(uri.removeprefix("sqlite:///")).resolve().with_suffix(".artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def _tags(run: Run) -> dict[str, str]:
    record = run.record
    return {
        "medimg.run_id": run.id,
        "medimg.kind": str(record.get("spec", {}).get("kind")),
        "medimg.run_path": str(run.path.resolve()),
        "medimg.dataset": str(record.get("spec", {}).get("dataset", {}).get("path")),
    }


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists and other leaves stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:PARAM_LENGTH]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _version(package: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(package)
