"""Test-split metrics a clinician-reviewer expects, computed with scikit-learn, and the curves behind them."""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from medimg.runs import Run


def predict_arrays(model: Any, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N × K) for uint8 images, in batches, calling the model directly."""
    from medimg.models import probabilities

    if len(images) == 0:
        return np.zeros((0, 0))
    chunks = [
        probabilities(model, np.asarray(images[i : i + batch_size], dtype=np.float32))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC AUC (binary, or macro one-vs-rest), per-class sensitivity/specificity/
    precision/F1 and the confusion matrix (rows: true class, columns: predicted)."""
    from sklearn import metrics

    y_true = np.asarray(y_true, dtype=int)
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(axis=1)
    matrix = metrics.confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    total = matrix.sum()
    per_class = {}
    for i, name in enumerate(class_names):
        true_negative = total - matrix[i, :].sum() - matrix[:, i].sum() + matrix[i, i]
        negatives = total - matrix[i, :].sum()
        per_class[name] = {
            "sensitivity": float(recall[i]),
            "specificity": float(true_negative / negatives) if negatives else 0.0,
            "precision": float(precision[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
    return {
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(y_true, y_pred)),
        "auc": roc_auc(y_true, probs),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
        "count": len(y_true),
    }


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary AUC of the second class's probability, or macro one-vs-rest AUC; None when one class is absent."""
    from sklearn import metrics

    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(metrics.roc_auc_score(y_true, probs[:, 1]))
    if len(present) < probs.shape[1]:
        return None
    return float(metrics.roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))


def roc_curves(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, dict[str, list]]:
    """ROC curve per class (one-vs-rest; for two classes just the positive, second class)."""
    from sklearn import metrics

    indices = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    curves = {}
    for i in indices:
        positives = (np.asarray(y_true) == i).astype(int)
        if positives.min() == positives.max():
            continue
        fpr, tpr, _ = metrics.roc_curve(positives, probs[:, i])
        curves[class_names[i]] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(metrics.auc(fpr, tpr))}
    return curves


def evaluate_run(run: Run, data: Any = None, model: Any = None) -> dict[str, Any]:
    """Evaluate a run's model on its test split; writes metrics.json and predictions.csv, updates run.json."""
    from medimg import training

    spec = run.spec
    data = data or training.prepare_data(spec.dataset)
    model = model or run.load_model()
    test = data.arrays["test"]
    if len(test) == 0:
        from medimg.errors import DatasetError

        raise DatasetError("the test split is empty; use a test_fraction above 0 or add a test/ folder.")
    probs = predict_arrays(model, test.images)
    result = classification_metrics(test.labels, probs, data.class_names)
    result["roc"] = roc_curves(test.labels, probs, data.class_names)
    run.write_json("metrics.json", result)
    _write_predictions(run, test.paths, test.labels, probs, data.class_names)
    run.update(metrics={k: result[k] for k in ("accuracy", "balanced_accuracy", "auc")})
    return result


def _write_predictions(
    run: Run, paths: list[str], labels: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> None:
    temporary = run.path / ".predictions.csv.tmp"
    with open(temporary, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "true", "predicted", *[f"p_{c}" for c in class_names]])
        for path, label, row in zip(paths, labels, probs, strict=True):
            writer.writerow([path, class_names[label], class_names[int(row.argmax())], *[f"{p:.6f}" for p in row]])
    temporary.replace(run.path / "predictions.csv")


def read_predictions(run: Run) -> list[dict[str, str]]:
    try:
        with open(run.path / "predictions.csv", newline="", encoding="utf-8") as stream:
            return list(csv.DictReader(stream))
    except FileNotFoundError:
        return []
