"""`python -m medimg scan | tune | train | evaluate | predict | report | export | runs | resume | stop`.

Long commands print progress to standard error and the run directory as the last line of standard output, so
scripts can capture it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from medimg.config import BACKBONE_NAMES, DEFAULT_PRESET, PRESETS, SOFT_LABELS
from medimg.datasets.sources import DEMO_DATASET, default_group_regex
from medimg.errors import ConfigError, MedimgError, RunError

# Imports no TensorFlow itself. Commands call it after their own checks of the paths and flags given, so a mistyped
# path is answered at once, not after TensorFlow's seconds of start-up.
from medimg.model.runtime import start_tensorflow


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class ProgressBar:
    """A one-line text progress bar on standard error (redrawn in place on a terminal)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, message: str) -> None:
        width = 30
        filled = int(width * done / max(1, total))
        line = f"{message}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if done >= total else ""))
            sys.stderr.flush()
        elif done >= total:
            _err(line)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", help="dataset folder or CSV manifest (default: the bundled demo)")
    parser.add_argument("--runs", help="folder holding run directories (default: $MEDIMG_RUNS_DIR or ./runs)")
    parser.add_argument("--image-size", type=int, help="square input size in pixels (default 64)")
    parser.add_argument("--color", choices=["gray", "rgb"], help="channel mode (default gray)")
    parser.add_argument("--seed", type=int, help="seed for splits, initialisation and shuffling (default 42)")
    parser.add_argument("--val-fraction", type=float, help="validation fraction when the data has no split folders")
    parser.add_argument("--test-fraction", type=float, help="test fraction when the data has no split folders")
    parser.add_argument("--group-regex", help=r"regex with one group giving the patient ID, e.g. 'person(\d+)_'")
    parser.add_argument(
        "--merge-label-case",
        action="store_true",
        default=None,
        help="CSV manifests: 'Normal' and 'normal' are one class",
    )
    parser.add_argument("--epochs", type=int, help="epochs per trial (tune) or for the final fit (train)")
    parser.add_argument("--spec", help="JSON or TOML file with sections dataset, augment, search, tune, train, params")
    parser.add_argument("--augment", help="augmentations as name=value pairs, e.g. 'flip_horizontal=1,rotation=0.05'")
    parser.add_argument("--distribution", choices=["none", "mirrored"], help="tf.distribute strategy")
    parser.add_argument("--background", action="store_true", help="start the run as its own process and return")
    _add_mlflow_option(parser)
    backbones = "cnn, " + ", ".join(BACKBONE_NAMES)
    parser.add_argument(
        "--backbone",
        help=f"network: {backbones}; for tune a comma-separated list to search over (default cnn)",
    )
    parser.add_argument(
        "--weights",
        help="a backbone's starting weights: imagenet (found offline: see `weights list`), none, or a file (train)",
    )
    parser.add_argument("--fine-tune-blocks", help="top backbone blocks unfrozen in stage 2 (tune: a list), default 0")


def _add_mlflow_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        help="log the finished run to MLflow at this tracking URI, e.g. sqlite:///mlruns.db ($MLFLOW_TRACKING_URI)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medimg", description="Medical image classification workbench.")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    scan = commands.add_parser("scan", help="what is in a dataset folder")
    scan.add_argument("data", nargs="?")
    scan.add_argument("--json", action="store_true", help="print one JSON object")
    scan.add_argument("--group-regex", help="patient-ID pattern; default: the one the dataset brings, if any")
    scan.add_argument(
        "--merge-label-case", action="store_true", help="CSV manifests: 'Normal' and 'normal' are one class"
    )

    tune = commands.add_parser("tune", help="KerasTuner search over the given ranges")
    _add_data_options(tune)
    tune.add_argument("--max-trials", type=int)
    tune.add_argument(
        "--max-minutes", type=float, help="wall-time budget for the whole search, in minutes (0: no time limit)"
    )
    tune.add_argument("--tuner", choices=["random", "bayesian", "hyperband"])
    tune.add_argument("--objective", choices=["val_auc", "val_accuracy", "val_loss"])
    tune.add_argument("--executions-per-trial", type=int)
    tune.add_argument(
        "--cv-folds",
        type=int,
        help="score each trial by k-fold cross-validation on the training split (2..10; 0 = off)",
    )
    tune.add_argument("--resume", metavar="RUN", help="continue this search (completed trials are kept)")
    tune.add_argument("--run-name", help="fixed run folder name, shared by the chief and workers of one search")
    role = tune.add_mutually_exclusive_group()
    role.add_argument("--chief", metavar="HOST:PORT", help="run KerasTuner's oracle here (distributed search)")
    role.add_argument("--worker", metavar="HOST:PORT", help="run trials for the chief at HOST:PORT")
    tune.add_argument(
        "--preset",
        "--space",
        dest="preset",
        choices=list(PRESETS),
        help="; ".join(f"{p.name}: {p.about}" for p in PRESETS.values())
        + f" (default {DEFAULT_PRESET}, as on the Tune page)",
    )

    auto = commands.add_parser(
        "auto", help="a good model in N minutes: settings chosen from the data, search, final model, evaluation"
    )
    auto.add_argument("data", nargs="?", help="dataset folder or CSV manifest (default: the bundled demo)")
    auto.add_argument("--minutes", type=float, default=10.0, help="wall-time budget for every stage (default 10)")
    auto.add_argument("--runs", help="folder holding run directories (default: $MEDIMG_RUNS_DIR or ./runs)")
    auto.add_argument("--seed", type=int, default=42, help="seed for splits, initialisation and shuffling")
    auto.add_argument("--image-size", type=int, help="square input size in pixels (default: chosen from the data)")
    auto.add_argument("--color", choices=["gray", "rgb"], help="channel mode (default: chosen from the data)")
    auto.add_argument("--spec", help="JSON or TOML spec whose dataset section is kept (fractions, group regex)")
    auto.add_argument(
        "--cv-folds", type=int, help="score each trial by k-fold cross-validation of the training split (2..10)"
    )
    auto.add_argument(
        "--soft-labels",
        choices=list(SOFT_LABELS),
        help="training targets (default: ordinal when the class names are numbered grades, else none)",
    )
    auto.add_argument("--background", action="store_true", help="start the run as its own process and return")
    _add_mlflow_option(auto)

    train = commands.add_parser("train", help="final training with the best (or given) hyperparameters")
    _add_data_options(train)
    train.add_argument("--from-run", help="take this tune run's best hyperparameters (and its dataset settings)")
    train.add_argument("--params", help="model parameters as JSON, e.g. '{\"filters\": [32, 64]}'")

    evaluate = commands.add_parser("evaluate", help="test-split metrics of a run")
    evaluate.add_argument("run")
    evaluate.add_argument("--runs")
    evaluate.add_argument("--json", action="store_true")

    predict = commands.add_parser("predict", help="class probabilities for image files, CSV out")
    predict.add_argument("run")
    predict.add_argument("images", nargs="+", help="image files, or folders (every file under them)")
    predict.add_argument("--runs")
    predict.add_argument("--out", help="write the CSV here instead of standard output")

    report = commands.add_parser("report", help="one self-contained HTML report (model card) of an evaluated run")
    report.add_argument("run")
    report.add_argument("--runs")
    report.add_argument("--out", help="HTML file to write (default: report.html in the run's folder)")
    report.add_argument(
        "--threshold", type=float, help="call positive when p(positive) >= T (default: the validation operating point)"
    )
    report.add_argument("--positive", help="positive class of a two-class task (default: the not-normal class)")

    exporting = commands.add_parser(
        "export", help="the model as ONNX, LiteRT, SavedModel or .keras, with its contract and a parity check"
    )
    exporting.add_argument("run")
    exporting.add_argument("--runs")
    exporting.add_argument("--format", required=True, choices=["onnx", "litert", "saved_model", "keras"])
    exporting.add_argument("--out", required=True, help="folder to write the export folder into")
    exporting.add_argument("--quantize", choices=["float16", "int8"], help="litert only: weights (and activations)")

    listing = commands.add_parser("runs", help="list runs with status and headline metrics")
    listing.add_argument("--runs")
    listing.add_argument("--json", action="store_true")

    weights = commands.add_parser(
        "weights", help="backbone weight files: list | fetch NAME | import FILE", add_help=False, prefix_chars="\0"
    )
    weights.add_argument("rest", nargs=argparse.REMAINDER)

    for name, text in (
        ("resume", "carry out or resume a run from its run directory"),
        ("stop", "ask a running run to stop at its next batch"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("run")
        command.add_argument("--runs")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if getattr(args, "mlflow", None):  # the environment, so a --background run's own process sees it too
        os.environ["MLFLOW_TRACKING_URI"] = args.mlflow
    handler = globals()[f"command_{args.command}"]
    try:
        return handler(args) or 0
    except MedimgError as error:
        _err(f"error: {error}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


def command_scan(args: argparse.Namespace) -> int:
    from medimg.datasets import scanning

    data = args.data or DEMO_DATASET
    report = scanning.scan(
        data,
        args.group_regex if args.group_regex is not None else default_group_regex(data),
        on_progress=ProgressBar(),
        merge_label_case=args.merge_label_case,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(format_scan(report))
    return 0


def format_scan(report: Any) -> str:
    lines = [
        f"{report.root}  ({report.layout.replace('_', ' ')}, {report.image_count} readable images)",
        "",
        "classes:",
    ]
    lines += [f"  {name:<24} {count:>7}" for name, count in report.classes.items()]
    if report.splits:
        names = list(report.classes)
        lines += ["", "splits:    " + "".join(f"{n[:12]:>13}" for n in names)]
        lines += [
            f"  {split:<8} " + "".join(f"{counts.get(n, 0):>13}" for n in names)
            for split, counts in report.splits.items()
        ]
    lines += ["", "image sizes: " + ", ".join(f"{s} ({n})" for s, n in list(report.sizes.items())[:6])]
    lines += ["formats:     " + ", ".join(f"{m} ({n})" for m, n in report.modes.items())]
    if report.duplicates:
        lines += ["", f"exact duplicates: {len(report.duplicates)} groups"]
        lines += ["  " + "  ==  ".join(group) for group in report.duplicates[:10]]
    if report.leakage:
        lines += [f"LEAKAGE: {len(report.leakage)} identical images appear in more than one split"]
    if report.warnings:
        lines += ["", "warnings:"] + [f"  {warning}" for warning in report.warnings]
    lines += ["", f"unreadable or skipped: {len(report.unreadable)}"]
    lines += [f"  {item['path']}: {item['reason']}" for item in report.unreadable[:50]]
    if len(report.unreadable) > 50:
        lines.append(f"  ... and {len(report.unreadable) - 50} more (use --json for all)")
    return "\n".join(lines)


def _pairs(text: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        try:
            result[name.strip()] = json.loads(value)
        except ValueError:
            result[name.strip()] = value.strip()
    return result


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _numbers(text: str) -> list[int]:
    return [int(n) for n in _names(text)]


# One row per flag that sets a spec field: (argparse dest, run kinds, spec section, field, conversion). A flag not
# given (None, or False for a switch) leaves the spec file's value, else the preset's, else the dataclass default.
SPEC_FLAGS: tuple[tuple[str, tuple[str, ...], str, str, Any], ...] = (
    ("data", ("tune", "train"), "dataset", "path", None),
    ("image_size", ("tune", "train"), "dataset", "image_size", None),
    ("color", ("tune", "train"), "dataset", "color", None),
    ("seed", ("tune", "train"), "dataset", "seed", None),
    ("val_fraction", ("tune", "train"), "dataset", "val_fraction", None),
    ("test_fraction", ("tune", "train"), "dataset", "test_fraction", None),
    ("group_regex", ("tune", "train"), "dataset", "group_regex", None),
    ("merge_label_case", ("tune", "train"), "dataset", "merge_label_case", None),
    ("epochs", ("tune", "train"), "train", "epochs", None),
    ("seed", ("tune", "train"), "train", "seed", None),
    ("max_trials", ("tune",), "tune", "max_trials", None),
    ("max_minutes", ("tune",), "tune", "max_minutes", None),
    ("tuner", ("tune",), "tune", "tuner", None),
    ("objective", ("tune",), "tune", "objective", None),
    ("executions_per_trial", ("tune",), "tune", "executions_per_trial", None),
    ("cv_folds", ("tune",), "tune", "cv_folds", None),
    ("backbone", ("tune",), "search", "backbones", _names),
    ("weights", ("tune",), "search", "weights", None),
    ("fine_tune_blocks", ("tune",), "search", "fine_tune_blocks", _numbers),
    ("backbone", ("train",), "params", "backbone", None),
    ("weights", ("train",), "params", "weights", None),
    ("fine_tune_blocks", ("train",), "params", "fine_tune_blocks", int),
)


def build_spec(args: argparse.Namespace, kind: str) -> Any:
    """A RunSpec ("tune" or "train"): each section from the spec file (if it has it), else the preset's (search,
    trial count, epochs), else the configuration's defaults; then the flags given (`SPEC_FLAGS`) on top. Raises
    ConfigError for a value the configuration refuses."""
    from medimg.config import RunSpec, load_spec_file

    sections = load_spec_file(args.spec) if args.spec else {}
    preset = PRESETS[getattr(args, "preset", None) or DEFAULT_PRESET]  # the pages start from the same one
    spec: dict[str, Any] = {
        "kind": kind,
        "dataset": dict(sections.get("dataset", {})),
        "train": dict(
            sections.get("train", {"epochs": preset.trial_epochs if kind == "tune" else preset.train_epochs})
        ),
        "augment": {**sections.get("augment", {}), **_pairs(args.augment)},
        "params": dict(sections.get("params", {})),
        "distribution": args.distribution or "none",
    }
    if kind == "tune":
        spec["search"] = dict(sections.get("search") or preset.search.to_dict())
        spec["tune"] = dict(sections.get("tune", {"max_trials": preset.max_trials}))
        if args.max_minutes and args.max_trials is None and "max_trials" not in sections.get("tune", {}):
            from medimg.auto import BUDGET_MAX_TRIALS

            spec["tune"]["max_trials"] = BUDGET_MAX_TRIALS  # the budget ends the search, not a trial count
    for flag, kinds, section, field, convert in SPEC_FLAGS:
        value = getattr(args, flag, None)
        if kind in kinds and value is not None and value is not False:
            spec[section][field] = convert(value) if convert else value
    if not spec["dataset"].get("path"):  # the bundled demo
        spec["dataset"]["path"] = str(DEMO_DATASET)
    if "group_regex" not in spec["dataset"]:  # given by neither the spec file nor a flag ("" is given: none)
        # The patient IDs the dataset brings: the demo's, or a known naming convention's.
        spec["dataset"]["group_regex"] = default_group_regex(spec["dataset"]["path"])
    spec["dataset"]["path"] = str(Path(spec["dataset"]["path"]).resolve())
    if kind == "tune":
        spec["train"].setdefault("monitor", spec["tune"].get("objective", "val_auc"))
    return RunSpec.from_dict(spec)


def _run_and_report(spec: Any, args: argparse.Namespace, extra: dict[str, Any] | None = None) -> int:
    from medimg import jobs
    from medimg.datasets.dataset import check_classes
    from medimg.store import runs

    if args.background:  # jobs.launch checks the dataset before it makes a run folder
        run = jobs.launch(spec, args.runs, extra=extra)
        _err(f"started {run.id} in the background (pid {run.pid}); watch it with `python -m medimg runs`")
        print(run.path)
        return 0
    from medimg.model import backbones

    check_classes(spec.dataset.path)  # a mistyped path or a one-class folder is a message, not a failed run folder
    backbones.check_spec_weights(spec)  # a missing weights file is a message, not a failed run folder
    start_tensorflow()
    run = runs.create_run(spec, args.runs, extra=extra)
    _err(f"run {run.id}: {spec.kind} on {spec.dataset.path}")
    echo = _err
    if extra and "auto" in extra:
        echo = BudgetEcho(extra["auto"]["minutes"])
    try:
        metrics = jobs.execute(run, echo=echo)
    except KeyboardInterrupt:
        _err(f"stopped; resume with: python -m medimg resume {run.path}")
        print(run.path)
        return 130
    except MedimgError:
        print(run.path)
        raise
    _say_results(run, metrics)
    print(run.path)
    return 0


def _say_results(run: Any, metrics: dict[str, Any]) -> None:
    """The lines a finished run ends with on standard error: the saved model on validation, then on test, and
    the search's warning if any (after `auto`, `tune`, `train` and `resume` alike)."""
    if metrics:
        for line in [*format_validation(metrics), *format_test_metrics(metrics)]:
            _err(line)
    if run.record.get("search_warning"):
        _err(f"WARNING: {run.record['search_warning']}")


def format_validation(metrics: dict[str, Any]) -> list[str]:
    """The saved model's own figures on validation (`evaluation.validation_figures`), the split it was chosen on,
    as one line; none when the run has no validation split. A search's trial table scores one network each,
    during training; this is the model the run keeps."""
    figures = metrics.get("validation") or {}
    if figures.get("accuracy") is None:
        return []
    auc = "n/a" if figures.get("auc") is None else f"{figures['auc']:.4f}"
    which = (
        "the saved model's searched members (the split they were chosen on; the retrained members saw it)"
        if figures.get("judged") == "searched members"
        else "the saved model (the split it was chosen on)"
    )
    return [f"validation, {which}: AUC {auc}  accuracy {figures['accuracy']:.4f}  log loss {figures['loss']:.4f}"]


def format_test_metrics(metrics: dict[str, Any]) -> list[str]:
    """The test figures a run ends with (`evaluation.evaluate_run`'s answer): at the arg-max (0.5 for two classes;
    the macro one-vs-rest AUC for more), at the validation-chosen operating point, and a loud line when the model
    calls every test image one class or never calls some class."""
    from medimg.metrics import ordinal
    from medimg.results.evaluation import never_predicted_warning

    auc = "n/a" if metrics.get("auc") is None else f"{metrics['auc']:.4f}"
    count = len(metrics.get("class_names") or [])
    decision = f"arg-max over {count} classes): macro AUC" if count > 2 else "threshold 0.5 / arg-max): AUC"
    lines = [
        f"test ({decision} {auc}  accuracy {metrics['accuracy']:.4f}  "
        f"balanced accuracy {metrics['balanced_accuracy']:.4f}"
    ]
    point = metrics.get("validation_operating_point")
    if point:
        lines.append(
            f"test at the operating point chosen on {point['chosen_on']} (Youden's J, threshold "
            f"{point['threshold']:.3f}): sensitivity {point['sensitivity']:.4f}  specificity "
            f"{point['specificity']:.4f}  accuracy {point['accuracy']:.4f}  "
            f"balanced accuracy {point['balanced_accuracy']:.4f}"
        )
    elif (metrics.get("clinical") or {}).get("presets_reason"):
        lines.append(f"no operating point chosen: {metrics['clinical']['presets_reason']}")
    if metrics.get("one_class"):
        lines.append(f"WARNING: {metrics['one_class']}")
    if metrics.get("ordinal"):
        lines.append(ordinal.describe(metrics["ordinal"]))
    never = never_predicted_warning(metrics.get("never_predicted") or [], count)
    if never:
        lines.append(f"WARNING: {never}")
    return lines


class BudgetEcho:
    """Progress lines on standard error prefixed with the elapsed time, the budget and the time left."""

    def __init__(self, minutes: float) -> None:
        self.start = time.time()
        self.budget = minutes * 60

    def __call__(self, message: str) -> None:
        elapsed = time.time() - self.start
        left = max(0.0, self.budget - elapsed)
        _err(f"[{_clock(elapsed)} of {_clock(self.budget)}, about {_clock(left)} left] {message}")


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def command_auto(args: argparse.Namespace) -> int:
    from medimg import auto
    from medimg.config import RunSpec, load_spec_file

    data = args.data or DEMO_DATASET
    dataset = load_spec_file(args.spec).get("dataset", {}) if args.spec else {}
    if "group_regex" not in dataset:  # the patient IDs the dataset brings: the demo's, or a known convention's
        dataset["group_regex"] = default_group_regex(data)
    base = RunSpec.from_dict({"dataset": dataset})
    chosen = auto.plan(
        data,
        args.minutes,
        seed=args.seed,
        image_size=args.image_size,
        color=args.color,
        base=base,
        cv_folds=args.cv_folds,
        soft_labels=args.soft_labels,
    )
    _err(f"automatic mode, {args.minutes:g} minute{'' if args.minutes == 1 else 's'} on {data}:")
    for line in chosen.lines():
        _err(f"  {line}")
    return _run_and_report(chosen.spec, args, extra={"auto": chosen.record()})


def command_tune(args: argparse.Namespace) -> int:
    from medimg.model import tuning
    from medimg.store import runs

    spec = build_spec(args, "tune")
    if args.resume:
        run = runs.find_run(args.resume, args.runs)
        saved = run.spec
        sections = load_sections(args.spec) if args.spec else {}

        def given(*flags: str) -> bool:
            return any(getattr(args, flag, None) is not None for flag in flags)

        # A resumed search keeps what it was started with unless this command says otherwise.
        if args.preset is None and "search" not in sections:
            spec = spec.replace(search=saved.search)
        if args.data is None:
            spec = spec.replace(dataset=saved.dataset)
        if args.augment is None and "augment" not in sections:  # what a trial trains on (pixels, cached features)
            spec = spec.replace(augment=saved.augment)
        if "tune" not in sections:  # the flags given change the saved search's settings, not the defaults'
            changed = {
                field: convert(getattr(args, flag)) if convert else getattr(args, flag)
                for flag, kinds, section, field, convert in SPEC_FLAGS
                if section == "tune" and "tune" in kinds and getattr(args, flag, None) is not None
            }
            spec = spec.replace(tune=saved.tune.replace(**changed))
        if not given("epochs", "seed") and "train" not in sections:
            spec = spec.replace(train=saved.train)
        tuning.check_search_space(run.path / tuning.TUNER_FOLDER, spec.search, record=False)
        tuning.check_scoring(run.path / tuning.TUNER_FOLDER, spec.tune.cv_folds, spec.search, record=False)
        run.update(spec=spec.to_dict())
        return _execute_existing(run)
    if args.chief or args.worker:
        return _distributed_tune(spec, args)
    return _run_and_report(spec, args)


def load_sections(path: str) -> dict[str, Any]:
    from medimg.config import load_spec_file

    return load_spec_file(path)


def _execute_existing(run: Any) -> int:
    from medimg import jobs

    jobs.execute(run, echo=_err)
    print(run.path)
    return 0


def _distributed_tune(spec: Any, args: argparse.Namespace) -> int:
    """Chief: create the shared run folder and serve the oracle. Worker: join that folder and run trials."""
    from medimg import workflows
    from medimg.model import tuning
    from medimg.store import runs

    if not args.run_name:
        raise ConfigError("a distributed search needs --run-name NAME, the same for the chief and every worker.")
    tuning.set_distributed_role("chief" if args.chief else "worker", args.chief or args.worker)
    path = runs.runs_root(args.runs) / args.run_name
    if args.chief:
        run = runs.create_named_run(spec, path)
        _err(f"chief of {run.id}: oracle on {args.chief} (no authentication: keep it on a private network)")
        return _execute_existing(run)
    deadline = time.time() + 120
    while not (path / "run.json").is_file():  # the chief creates the folder; workers may start first
        if time.time() > deadline:
            raise RunError(f"no chief created {path} within 2 minutes; start the chief with the same --run-name.")
        time.sleep(0.5)
    run = runs.Run(path)
    workflows.execute_tune(run, echo=_err)
    print(run.path)
    return 0


def command_train(args: argparse.Namespace) -> int:
    from medimg.config import ModelParams
    from medimg.store import runs

    spec = build_spec(args, "train")
    if args.from_run:
        from medimg.workflows import train_spec_from_search

        sections = load_sections(args.spec) if args.spec else {}
        # The search's own dataset and augmentation and the final-fit schedule, unless given again here.
        spec = train_spec_from_search(
            runs.find_run(args.from_run, args.runs),
            dataset=spec.dataset if args.data or "dataset" in sections else None,
            augment=spec.augment if args.augment or "augment" in sections else None,
            train=spec.train if "train" in sections else None,
            epochs=args.epochs,
        ).replace(**({"distribution": args.distribution} if args.distribution else {}))
    if args.params:
        try:
            given = json.loads(args.params)
        except ValueError as error:
            raise ConfigError(f"--params is not valid JSON: {error}") from error
        spec = spec.replace(params=ModelParams.from_dict({**spec.params.to_dict(), **given}))
    return _run_and_report(spec, args)


def command_evaluate(args: argparse.Namespace) -> int:
    from medimg.results import evaluation
    from medimg.store import runs

    run = runs.find_run(args.run, args.runs)
    start_tensorflow()
    result = evaluation.evaluate_run(run)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "roc"}, indent=2))
        return 0
    print(f"run {run.id}: test split, {result['count']} images")
    print("\n".join([*format_validation(result), *format_test_metrics(result)]))
    print(f"{'class':<20}{'sensitivity':>12}{'specificity':>12}{'precision':>11}{'F1':>8}{'n':>6}")
    for name, row in result["per_class"].items():
        print(
            f"{name:<20}{row['sensitivity']:>12.3f}{row['specificity']:>12.3f}{row['precision']:>11.3f}"
            f"{row['f1']:>8.3f}{row['support']:>6}"
        )
    print("confusion matrix (rows true, columns predicted):", result["confusion_matrix"])
    for line in format_subgroups(result.get("subgroups")):
        print(line)
    return 0


def format_subgroups(summary: dict | None) -> list[str]:
    """`evaluation.subgroup_summary` as text lines, one block per manifest column; [] without subgroups."""
    from medimg.results import tables

    if not summary:
        return []
    threshold = summary["threshold"]
    if threshold is None:
        decision = "the arg-max"
    elif summary.get("chosen_on") == "val":
        decision = f"threshold {threshold:.3f} (the operating point chosen on validation)"
    else:
        decision = f"threshold {threshold:.3f} (validation could not choose an operating point)"
    lines = []
    for column, rows in summary["columns"].items():
        lines.append(f"by {column}, test split at {decision}, 95 % bootstrap intervals:")
        shown = tables.subgroup_rows(rows, column)
        widths = {key: max(len(key), *(len(str(row[key])) for row in shown)) for key in shown[0]}
        lines.append("  " + "  ".join(f"{key:<{widths[key]}}" for key in shown[0]))
        lines += ["  " + "  ".join(f"{row[key]!s:<{widths[key]}}" for key in row) for row in shown]
    if summary["not_analysed"]:
        lines.append(
            f"not analysed as subgroups: {', '.join(summary['not_analysed'])} (one value per class: its subgroups "
            "would be the classes)"
        )
    return lines


def command_predict(args: argparse.Namespace) -> int:
    from medimg.results.predict import Predictor, predictions_csv
    from medimg.store import runs

    run = runs.find_run(args.run, args.runs)
    start_tensorflow()
    predictor = Predictor(run)
    results = predictor.predict([(path, path) for path in _expand_folders(args.images)])
    text = predictions_csv(results, predictor.class_names)
    _err(f"called: {predictor.decision}")  # so p = 0.69 called NORMAL at a 0.72 operating point is not a surprise
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        _err(f"wrote {len(results)} row{'s' if len(results) != 1 else ''} to {args.out}")
    else:
        sys.stdout.write(text)
    failed = [r for r in results if r.error]
    for result in failed:
        _err(f"skipped {result.name}: {result.error}")
    for result in results:
        if result.note:
            _err(f"note {result.name}: {result.note}")
    return 1 if failed and len(failed) == len(results) else 0


def _expand_folders(paths: list[str]) -> list[str]:
    """Each folder given becomes the files under it (sorted, hidden and OS files left out); files stay as given."""
    from medimg.imaging.images import is_ignored

    expanded = []
    for path in paths:
        folder = Path(path)
        if folder.is_dir():
            files = (f for f in folder.rglob("*") if f.is_file())
            expanded += sorted(str(f) for f in files if not any(is_ignored(p) for p in f.relative_to(folder).parts))
        else:
            expanded.append(path)
    return expanded


def command_weights(args: argparse.Namespace) -> int:
    from medimg.model.backbones import weights_command

    return weights_command(args.rest)


def command_report(args: argparse.Namespace) -> int:
    from medimg.results import report
    from medimg.store import runs

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold {args.threshold} is not a probability; give a value between 0 and 1.")
    run = runs.find_run(args.run, args.runs)
    classes = len(run.record.get("class_names") or [])
    if classes > 2 and (args.threshold is not None or args.positive):
        given = "--threshold" if args.threshold is not None else "--positive"
        raise ConfigError(
            f"{given} applies to a two-class model; run {run.id} has {classes} classes, called by the arg-max "
            f"(the class of highest probability). Leave {given} out."
        )
    start_tensorflow()
    path = report.write_report(run, args.out or run.path / "report.html", args.threshold, args.positive)
    _err(f"wrote the report of {run.id} ({path.stat().st_size / 2**20:.1f} MB, opens offline)")
    print(path)
    return 0


def command_export(args: argparse.Namespace) -> int:
    from medimg import export
    from medimg.store import runs

    export.check_request(args.format, args.quantize)  # a wrong request is told before any model is loaded
    run = runs.find_run(args.run, args.runs)
    start_tensorflow()
    result = export.export_run(run, args.format, args.out, args.quantize)
    _err(
        f"exported {result.model_file.name} ({result.size_bytes / 1024:.0f} KB); parity on {result.sample_size} test "
        f"images: max |p - p_keras| = {result.max_abs_diff:.2e} (tolerance {result.tolerance:g})"
    )
    print(result.path)
    return 0


def command_runs(args: argparse.Namespace) -> int:
    from medimg.store import runs

    rows = [run.summary() for run in runs.list_runs(args.runs)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no runs under {runs.runs_root(args.runs)}")
        return 0
    table = [run.table_row() for run in runs.list_runs(args.runs)]  # the Runs page's columns
    widths = {column: max(len(column), *(len(str(row[column])) for row in table)) for column in table[0]}
    print("  ".join(column.ljust(width) for column, width in widths.items()).rstrip())
    for row in table:
        print("  ".join(str(row[column]).ljust(width) for column, width in widths.items()).rstrip())
    return 0


def command_resume(args: argparse.Namespace) -> int:
    from medimg import jobs
    from medimg.store import runs

    run = runs.find_run(args.run, args.runs)
    start_tensorflow()
    _say_results(run, jobs.execute(run, echo=_err))
    print(run.path)
    return 0


def command_stop(args: argparse.Namespace) -> int:
    from medimg import jobs
    from medimg.store import runs

    run = runs.find_run(args.run, args.runs)
    jobs.stop(run)
    _err(f"asked {run.id} to stop at its next batch")
    return 0
