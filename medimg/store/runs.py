"""The run directory: the single source of truth for a tune or train run.

run.json        spec, status, class names, input contract, best parameters, headline metrics
events.jsonl    one JSON line per epoch / batch tick / trial / status change, appended and flushed
history.json    per-epoch metrics of the final training
metrics.json    test-split evaluation (headline metrics, per class, ROC)
predictions.csv per-image probabilities for the val and test splits (`split` column)
model.keras     the model (its SHA-256 is recorded in run.json and checked on load)
tuner/          KerasTuner's project folder;  logs/  TensorBoard;  log.txt  the process's output
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

from medimg.config import RunSpec
from medimg.errors import RunError
from medimg.imaging.contract import InputContract

ACTIVE_STATUSES = ("queued", "running")
# A launched run is "queued" in run.json until its process takes over; the concurrency limit refuses a run rather
# than making it wait (`jobs.launch`), so to a user it is starting, not waiting in a queue.
SHOWN_STATUS = {"queued": "starting"}


def shown_status(status: str) -> str:
    """A run.json status as people read it: "starting" for "queued" (`SHOWN_STATUS`), others as they are."""
    return SHOWN_STATUS.get(status, status)


DIED_WITHOUT_A_WORD = "its process ended without saying why (killed, or out of memory?); see log.txt"
FINAL_STATUSES = ("completed", "stopped", "failed")
QUEUED_GRACE_S = 120.0


class Progress(TypedDict):
    """What a watcher shows of a run (`progress`): times in seconds, `fraction` of the whole run in 0..1, epochs and
    trials numbered from 0 as in the event log, None for what is not known yet."""

    status: str
    kind: str  # "tune" or "train"
    trials_done: int  # trials that completed (collapsed ones included), not cut short by Stop
    trials_collapsed: int  # of those, the ones that called every validation image one class
    trials_other: dict[str, int]  # the other ended trials by lower-case status: {"stopped": 1, "failed": 2}
    max_trials: int | None  # None for a training, or a search that only a time budget ends
    trial: str | None  # the KerasTuner id of the running (or last) trial
    epoch: int | None
    epochs: int | None
    batch: int | None
    steps: int | None
    elapsed_s: float
    eta_s: float | None
    fraction: float
    error: str | None
    message: str  # the last status message (a stop, a failure)
    warnings: list[str]  # the dataset's, said when the run started (`datachecks`)
    stage: str  # after a search's trials, what it is doing ("" otherwise): retraining its best trials


class RunSummary(TypedDict):
    """One run in a list (`Run.summary`): scores as fractions, `duration_s` in seconds, `created` a Unix time."""

    id: str
    kind: str
    status: str
    dataset: str
    created: float | None
    duration_s: float | None
    test_auc: float | None
    test_accuracy: float | None
    best_score: float | None
    val_metric: str  # what `val_score` measures: the search's objective or the training's monitor
    val_score: float | None


LAUNCHED_PID = "launched.pid"  # the launcher's record of a queued run's process id (run.json is the run's own)
# A trial cap this high means "until the time budget is spent" (medimg.auto.BUDGET_MAX_TRIALS).
BUDGET_ONLY_TRIALS = 999


def runs_root(path: str | Path | None = None) -> Path:
    """Where runs live: the given path, else $MEDIMG_RUNS_DIR, else ./runs."""
    return Path(path or os.environ.get("MEDIMG_RUNS_DIR") or "runs")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder and rename it over the target (never half-written)."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2, default=str)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        # A zombie (exited, not yet reaped by its parent) is not a live run.
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


class Run:
    """One run directory. Cheap to construct; every property reads the disk (another process writes it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def input_contract(self) -> InputContract:
        """How a file becomes this run's model input (run.json "input"). Raises RunError before a model exists."""
        return InputContract.from_record(self.record, self.id)

    @property
    def record(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "run.json").read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise RunError(
                f"{self.path} is not a medimg run (no run.json); pick a folder from `medimg runs`."
            ) from error
        except json.JSONDecodeError as error:
            raise RunError(f"{self.path}/run.json is damaged: {error}") from error

    @property
    def spec(self) -> RunSpec:
        return RunSpec.from_dict(self.record["spec"])

    @property
    def status(self) -> str:
        record = self.record
        status = record.get("status", "failed")
        if status in ACTIVE_STATUSES and record.get("pid") and not pid_alive(record.get("pid")):
            self._record_death(record)
            return "failed"
        if status == "queued" and not record.get("pid"):
            launched = self.launched_pid()
            if launched is not None and not pid_alive(launched):
                return "failed"  # its process ended before it said a word
            queued = record.get("queued_at") or record.get("created", 0)
            if launched is None and time.time() - queued > QUEUED_GRACE_S:
                return "failed"  # its process never started; do not let it hold the concurrency limit forever
        return status

    def _record_death(self, record: dict[str, Any]) -> None:
        """A run whose process died without a word (killed, out of memory, the machine restarted): record it failed,
        ended at its last sign of life (the newest event, else run.json), with the reason, so its clock stops, the
        pages say why, and a resume counts the stretch it ran (`set_status`)."""
        last = record.get("started") or 0.0
        for name in ("events.jsonl", "run.json"):
            try:
                last = max(last, (self.path / name).stat().st_mtime)
                break
            except OSError:
                continue
        self.update(status="failed", finished=round(last, 3), error=record.get("error") or DIED_WITHOUT_A_WORD)
        self.append_event("status", status="failed", error=DIED_WITHOUT_A_WORD)

    @property
    def pid(self) -> int | None:
        """The run's process id: the one the process recorded once it started, else the one its launcher kept."""
        return self.record.get("pid") or self.launched_pid()

    def launched_pid(self) -> int | None:
        """The process id the launcher started for this run (`jobs.start_process`), or None."""
        try:
            return int((self.path / LAUNCHED_PID).read_text())
        except (OSError, ValueError):
            return None

    def update(self, **fields: Any) -> dict[str, Any]:
        record = self.record
        record.update(fields)
        write_json_atomic(self.path / "run.json", record)
        return record

    def set_status(self, status: str, **fields: Any) -> None:
        """Record a status. "running" (re)starts the clock: a resumed run's earlier running time is kept in
        `earlier_seconds` and its old `finished` cleared, so elapsed time, durations and a time budget count every
        stretch the run ran, and never the pause between a stop and its resume."""
        now = time.time()
        extra: dict[str, Any] = {}
        if status == "running":
            record = self.record
            started, finished = record.get("started"), record.get("finished")
            earlier = float(record.get("earlier_seconds") or 0.0)
            if started and finished and finished >= started:
                earlier += finished - started
            # A stop's advice ("continue with: … resume") or a failure's reason belongs to the stretch that ended.
            extra = {"started": now, "finished": None, "earlier_seconds": round(earlier, 3), "message": None}
        if status in FINAL_STATUSES:
            extra = {"finished": now}
        self.update(status=status, **extra, **fields)
        self.append_event("status", status=status, **{k: v for k, v in fields.items() if k in ("message", "error")})

    def append_event(self, kind: str, **data: Any) -> None:
        line = json.dumps({"t": round(time.time(), 3), "type": kind, **data}, default=str)
        with open(self.path / "events.jsonl", "a", encoding="utf-8") as stream:
            stream.write(line + "\n")
            stream.flush()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        try:
            lines = (self.path / "events.jsonl").read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        events = []
        for line in lines:
            with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
                event = json.loads(line)
                if kind is None or event.get("type") == kind:
                    events.append(event)
        return events

    def read_json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_json(self, name: str, data: Any) -> None:
        write_json_atomic(self.path / name, data)

    def epoch_history(self, trial: str | None = None) -> dict[str, list[float]]:
        """Per-epoch metrics from the event log (continues across a resume), for the final fit or one trial."""
        return self._histories().get(trial, {"epoch": []})

    def comparison_curve(self) -> tuple[str, dict[str, list[float]]]:
        """(label, per-epoch history) that stands for this run when runs are compared: its own fit's epochs, else, for
        a search whose final model is its trials' (no fit of its own), its best trial's, labelled so; while a search
        runs (no best recorded yet), its best finished trial so far by the trial's score, and before any trial has
        finished, the trial with the most epochs (a search in its first trial still has a curve). The history has an
        empty "epoch" list when the run has no epoch yet.

        Also the test of whether a run has a curve to compare; a damaged run.json counts as no best trial."""
        histories = self._histories()
        own = histories.get(None)
        if own and own.get("epoch"):
            return self.id, own
        try:
            best = self.record.get("best_trial")
        except RunError:  # a damaged run.json: its own epochs (above) are all there is
            best = None
        if best in histories:
            return f"{self.id} (best trial {trial_number(best)})", histories[best]
        try:
            active = self.status in ACTIVE_STATUSES
            objective = str(self.record.get("objective") or self.spec.tune.objective)
        except (RunError, KeyError, ValueError, TypeError):  # a damaged run.json: read as ended, objective unknown
            active, objective = False, ""
        scores = {e["trial"]: e["score"] for e in self.events("trial_end") if e.get("score") is not None}
        scored = [trial for trial in scores if trial in histories]
        if scored:
            pick = (min if objective.endswith("loss") else max)(scored, key=scores.__getitem__)
            label = f"best trial {trial_number(pick)} so far" if active else f"best finished trial {trial_number(pick)}"
            return f"{self.id} ({label})", histories[pick]
        trials = [trial for trial, history in histories.items() if trial is not None and history.get("epoch")]
        if trials:
            longest = max(trials, key=lambda trial: len(histories[trial]["epoch"]))
            state = "so far" if active else "unfinished"
            return f"{self.id} (trial {trial_number(longest)} {state})", histories[longest]
        return self.id, {"epoch": []}

    def stage_starts(self, trial: str | None = None) -> list[int]:
        """Epochs (numbered from 1, as in `epoch_history`) at which a later fine-tuning stage began, from the epoch
        events' `stage` (`training.fit_model`); [] for a one-stage fit."""
        stages = {
            int(event["epoch"]) + 1: int(event["stage"])
            for event in self.events("epoch")
            if event.get("trial") == trial and event.get("stage")
        }
        ordered = sorted(stages.items())
        return [epoch for (epoch, stage), (_, before) in zip(ordered[1:], ordered, strict=False) if stage > before]

    def trial_histories(self) -> dict[str, dict[str, list[float]]]:
        """Per-epoch metrics of every trial, by trial id, from one read of the event log (as `epoch_history`)."""
        return {trial: history for trial, history in self._histories().items() if trial is not None}

    def _histories(self) -> dict[str | None, dict[str, list[float]]]:
        # One pass over the log; a resumed epoch's later event replaces its earlier one. A cross-validated trial's
        # epochs (events with a `fold`) are the mean over the folds that reached them.
        by_trial: dict[str | None, dict[int, dict[Any, dict[str, float]]]] = {}
        for event in self.events("epoch"):
            by_trial.setdefault(event.get("trial"), {}).setdefault(int(event["epoch"]), {})[event.get("fold")] = event[
                "logs"
            ]
        histories = {}
        for trial, by_epoch in by_trial.items():
            history: dict[str, list[float]] = {"epoch": []}
            for epoch in sorted(by_epoch):
                folds = list(by_epoch[epoch].values())
                history["epoch"].append(epoch + 1)
                for name in folds[0]:
                    values = [logs[name] for logs in folds if name in logs]
                    history.setdefault(name, []).append(sum(values) / len(values))
            histories[trial] = history
        return histories

    def request_stop(self) -> None:
        (self.path / "STOP").touch()
        self.append_event("stop_requested")

    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()

    @property
    def model_path(self) -> Path:
        return self.path / "model.keras"

    def save_model(self, model: Any) -> None:
        """Save model.keras atomically and record its hash, which `load_model` checks."""
        temporary = self.path / ".model.tmp.keras"
        model.save(temporary)
        os.replace(temporary, self.model_path)
        self.update(model_sha256=file_sha256(self.model_path))

    def summary(self) -> RunSummary:
        record = self.record
        metrics = record.get("metrics") or {}
        active = record.get("status") in ACTIVE_STATUSES
        ran = record.get("started") and (record.get("finished") or active)
        return {
            "id": self.id,
            "kind": record.get("spec", {}).get("kind", "?"),
            "status": self.status,
            "dataset": record.get("spec", {}).get("dataset", {}).get("path", ""),
            "created": record.get("created"),
            "duration_s": round(running_seconds(record), 1) if ran else None,
            "test_auc": metrics.get("auc"),
            "test_accuracy": metrics.get("accuracy"),
            "best_score": record.get("best_score"),
            **self.validation_score(),
        }

    def table_row(self) -> dict[str, Any]:
        """`summary` for people: plain column names, the local start time, a duration as m:ss, the validation
        score named by its metric, '–' for what is not known (never None); `note`: why a run failed or stopped."""
        summary = self.summary()
        record = self.record
        started = summary.get("created")
        duration = summary.get("duration_s")
        metric = str(summary.get("val_metric") or "")
        score, auc, accuracy = summary.get("val_score"), summary.get("test_auc"), summary.get("test_accuracy")
        return {
            "run": summary["id"],
            "kind": {"tune": "search", "train": "training"}.get(summary["kind"], summary["kind"]),
            "status": shown_status(summary["status"]),
            "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)) if started else "–",
            "duration": f"{int(duration) // 60}:{int(duration) % 60:02d}" if duration is not None else "–",
            "dataset": summary["dataset"],
            "validation": f"{METRIC_WORDS.get(metric, metric)} {score:.3f}" if isinstance(score, float) else "–",
            "test AUC": f"{auc:.3f}" if isinstance(auc, float) else "–",
            "test accuracy (arg-max)": f"{accuracy:.3f}" if isinstance(accuracy, float) else "–",
            "note": _note(summary["status"], record),
        }

    def validation_score(self) -> dict[str, Any]:
        """The run's score on validation, the split models are chosen on, by the search's objective or the
        training's monitor: the saved model's own figure once it was evaluated (`metrics.validation`), else a
        search's best trial score or a training's best epoch. A trial score can differ from the saved model's (a
        mean of trials, class weights undone), and a cross-validated search's trial score is not on the validation
        split at all: its metric is then "cv_" + the objective. {"val_metric": name, "val_score": value}, values
        None when unknown."""
        record = self.record
        spec = record.get("spec", {})
        tune = spec.get("kind") == "tune"
        metric = (
            (record.get("objective") or spec.get("tune", {}).get("objective", "val_auc"))
            if tune
            else (record.get("monitor") or spec.get("train", {}).get("monitor", "val_auc"))
        )
        model = ((record.get("metrics") or {}).get("validation") or {}).get(metric.removeprefix("val_"))
        if isinstance(model, float):
            return {"val_metric": metric, "val_score": model}
        if tune:
            cross_validated = bool(spec.get("tune", {}).get("cv_folds"))
            return {"val_metric": f"cv_{metric}" if cross_validated else metric, "val_score": record.get("best_score")}
        values = [v for v in ((self.read_json("history.json") or {}).get(metric) or []) if v == v]
        best = (min(values) if metric.endswith("loss") else max(values)) if values else None
        return {"val_metric": metric, "val_score": best}


def running_seconds(record: dict[str, Any]) -> float:
    """Seconds a run has been running, over every stretch (a resumed run's `earlier_seconds` and the current one,
    up to now while it runs); 0.0 before it started."""
    started = record.get("started")
    if not started:
        return 0.0
    end = record.get("finished") or time.time()
    return float(record.get("earlier_seconds") or 0.0) + max(0.0, end - started)


def new_run_id(kind: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{kind}-{stamp}-{secrets.token_hex(2)}"


def create_run(
    spec: RunSpec, root: str | Path | None = None, status: str = "queued", extra: dict[str, Any] | None = None
) -> Run:
    """A new, uniquely named run directory holding the spec (`mkdir` fails rather than share a folder).

    `extra`: more fields for the first run.json (e.g. the automatic mode's choices), written with it in one go."""
    root = runs_root(root)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
        path = root / new_run_id(spec.kind)
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise RunError(f"could not create a new run folder under {root}.")
    return _start_record(path, spec, status, extra)


def create_named_run(spec: RunSpec, path: str | Path, status: str = "queued") -> Run:
    """A run in a folder of a fixed name (a distributed search's shared folder); an existing one is resumed."""
    path = Path(path)
    if (path / "run.json").is_file():
        return Run(path)
    path.mkdir(parents=True, exist_ok=True)
    return _start_record(path, spec, status)


def _start_record(path: Path, spec: RunSpec, status: str, extra: dict[str, Any] | None = None) -> Run:
    write_json_atomic(
        path / "run.json",
        {
            **(extra or {}),
            "id": path.name,
            "spec": spec.to_dict(),
            "status": status,
            "created": time.time(),
            "pid": None,
        },
    )
    run = Run(path)
    run.append_event("status", status=status)
    return run


METRIC_WORDS = {  # on validation; "cv_": a cross-validated trial score, on held-out folds of the training split
    "val_auc": "AUC",
    "val_accuracy": "accuracy",
    "val_loss": "loss",
    "cv_val_auc": "cross-validated AUC",
    "cv_val_accuracy": "cross-validated accuracy",
    "cv_val_loss": "cross-validated loss",
}


def trial_number(trial_id: Any) -> Any:
    """KerasTuner's trial id ("00", "01", …, counted from 0) as the number people see, counted from 1 (the one
    numbering of the trial table, the charts, the progress line and the best trial); a non-numeric id as it is."""
    try:
        return int(trial_id) + 1
    except (TypeError, ValueError):
        return trial_id


def list_runs(root: str | Path | None = None) -> list[Run]:
    """Runs under root, newest first."""
    root = runs_root(root)
    if not root.is_dir():
        return []
    found = [Run(p) for p in root.iterdir() if (p / "run.json").is_file()]
    # Ids are "<kind>-<YYYYmmdd-HHMMSS>-<random>": the part after the kind sorts by creation time.
    return sorted(found, key=lambda run: run.id.split("-", 1)[-1], reverse=True)


def find_run(reference: str | Path, root: str | Path | None = None) -> Run:
    """A run by folder path or by id under the runs root."""
    candidate = Path(reference)
    if (candidate / "run.json").is_file():
        return Run(candidate)
    by_id = runs_root(root) / str(reference)
    if (by_id / "run.json").is_file():
        return Run(by_id)
    raise RunError(f"no run '{reference}' (looked for {candidate} and {by_id}); `python -m medimg runs` lists them.")


def delete_run(run: Run) -> None:
    try:
        status = run.status
    except RunError:
        status = "damaged"  # an unreadable run.json must still be removable
    if status in ACTIVE_STATUSES:
        raise RunError(f"run {run.id} is still {shown_status(status)}; stop it before deleting it.")
    shutil.rmtree(run.path)


def progress(run: Run) -> Progress:
    """What a watcher shows: status, trials done of N, current epoch and batch, elapsed time and an ETA."""
    record = run.record
    spec = record.get("spec", {})
    events = run.events()
    trial_ends = [e for e in events if e["type"] == "trial_end"]
    # KerasTuner ends a trial that Stop cut short, or that called every validation image one class, as COMPLETED;
    # medimg's own events say which (as the trial table does). An event without a status is a completed trial's.
    stopped = {e.get("trial") for e in events if e["type"] == "trial_stopped"}
    collapsed = {e.get("trial") for e in events if e["type"] == "trial_collapsed"} - stopped
    statuses = [
        "stopped" if e.get("trial") in stopped else str(e.get("status") or "COMPLETED").lower() for e in trial_ends
    ]
    trials_done = statuses.count("completed")
    trials_other = {status: statuses.count(status) for status in sorted(set(statuses) - {"completed"})}
    trials_collapsed = len({e.get("trial") for e in trial_ends} & collapsed)
    batches = [e for e in events if e["type"] == "batch"]
    epochs = [e for e in events if e["type"] == "epoch"]
    last = (batches or epochs or [{}])[-1]
    if epochs and batches and epochs[-1]["t"] >= batches[-1]["t"]:
        last = {**epochs[-1], "batch": batches[-1].get("steps"), "steps": batches[-1].get("steps")}
    elapsed = running_seconds(record)
    kind = spec.get("kind", "train")
    total_trials = spec.get("tune", {}).get("max_trials") if kind == "tune" else None
    if kind == "tune":
        # The running trial counts by its epochs, so the first minute of a search is not "0 %" and no ETA.
        ended = {e.get("trial") for e in events if e["type"] == "trial_end"}
        running_trial = 0.0
        if record.get("status") == "running" and last.get("trial") not in ended and last.get("epochs"):
            done_epochs = sum(1 for e in epochs if e.get("trial") == last["trial"])
            running_trial = min(1.0, done_epochs / last["epochs"])
        fraction = (len(trial_ends) + running_trial) / total_trials if total_trials else 0.0
    else:
        total_epochs = spec.get("train", {}).get("epochs") or 1
        done_epochs = len({e["epoch"] for e in epochs if e.get("trial") is None})
        # Early stopping ends a fit before its last epoch; the run is then done, not 38 % done.
        fraction = 1.0 if record.get("status") == "completed" else done_epochs / total_epochs
    running = record.get("status") == "running"
    eta = elapsed / fraction * (1 - fraction) if 0 < fraction < 1 and running else None
    # A search with a time budget ends with the budget: its progress is the time spent, and its trial count is a
    # cap only when one was asked for (the automatic mode's is not shown). The automatic mode's budget counts
    # every stage, the final model and evaluation included.
    budget_s = 60 * float((record.get("auto") or {}).get("minutes") or spec.get("tune", {}).get("max_minutes") or 0)
    if kind == "tune" and budget_s:
        if total_trials and total_trials >= BUDGET_ONLY_TRIALS:
            total_trials = None
        spent = max(len(trial_ends) / total_trials if total_trials else 0.0, min(1.0, elapsed / budget_s))
        if running:
            fraction, eta = min(0.99, spent), max(0.0, budget_s - elapsed)
        else:
            fraction = 1.0 if record.get("status") == "completed" else spent
    return {
        "status": run.status,
        "kind": kind,
        "trials_done": trials_done,
        "trials_collapsed": trials_collapsed,
        "trials_other": trials_other,
        "max_trials": total_trials,
        "trial": last.get("trial"),
        "epoch": last.get("epoch"),
        "epochs": last.get("epochs") or spec.get("train", {}).get("epochs"),
        "batch": last.get("batch"),
        "steps": last.get("steps"),
        "elapsed_s": elapsed,
        "eta_s": eta,
        "fraction": min(1.0, fraction),
        "error": record.get("error"),
        "message": _last_message(events) or _early_stop_message(record),
        "warnings": list(record.get("warnings") or []),  # the dataset's, said when the run started (datachecks)
        "stage": _stage(events) if running else "",
    }


def _note(status: str, record: dict[str, Any]) -> str:
    """A run's failure reason or stop message, on one line of at most 100 characters ("" when neither)."""
    if status == "failed":
        text = record.get("error") or DIED_WITHOUT_A_WORD
    elif status == "stopped":
        text = record.get("message") or ""
    else:
        return ""
    line = str(text).splitlines()[0] if text else ""
    return line if len(line) <= 100 else line[:99] + "…"


def _early_stop_message(record: dict[str, Any]) -> str:
    """What `training` recorded when early stopping ended a completed fit before its last epoch, in a sentence."""
    stop = record.get("early_stopping")
    if record.get("status") != "completed" or not stop:
        return ""
    text = (
        f"Early stopping ended the fit after epoch {stop['epochs_run']} of {stop['epochs']}: {stop['monitor']} had not "
        f"improved for {stop['patience']} epochs. The model kept has the weights of epoch {stop['best_epoch']} "
        f"({stop['monitor']} {stop['best_value']:.4f})."
    )
    # Keras' figure is taken during training (its AUC from 200 thresholds, against the training targets); the run
    # lists show the saved model scored again, so say both when they differ (seen in review: 0.8399 against 0.8225).
    saved = ((record.get("metrics") or {}).get("validation") or {}).get(str(stop["monitor"]).removeprefix("val_"))
    if isinstance(saved, float) and abs(saved - stop["best_value"]) >= 5e-4:
        text += (
            f" Scored again on the saved model, as the run lists show it: {stop['monitor']} {saved:.4f} (the figure "
            "above was taken during training)."
        )
    return text


def _stage(events: list[dict[str, Any]]) -> str:
    """What a search does after its trials, from its latest event: a `refit` event (`tuning.refit_members`) says
    which trial's configuration is being retrained on train + val."""
    last = events[-1] if events else {}
    if last.get("type") != "refit":
        return ""
    return (
        f"Retraining trial {trial_number(last['trial'])}'s configuration on train + val ({last['number']} of "
        f"{last['of']}, {last['epochs']} epochs, about {last['seconds']:.0f} s) to join the final model"
    )


def _last_message(events: list[dict[str, Any]]) -> str:
    """The message or error of the latest status event only: a resumed run that completed has no stop advice."""
    for event in reversed(events):
        if event.get("type") == "status":
            return event.get("message") or event.get("error") or ""
    return ""
