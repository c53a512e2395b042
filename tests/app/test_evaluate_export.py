"""Evaluate page, export section: a format choice, an export checked against the Keras model, a zip download."""

from __future__ import annotations

import json

import pytest

from .conftest import FinishedRuns, by_label, no_exception, open_page, run_picker, values

pytest.importorskip("ai_edge_litert")


def test_an_export_is_checked_and_offered_as_a_zip(finished_runs: FinishedRuns) -> None:
    at = open_page("evaluate")
    run_picker(at, "evaluate_run").set_value(finished_runs.train_id).run()
    by_label(at.selectbox, "Export for deployment").set_value("LiteRT / TFLite").run()
    at.button(key="evaluate_export").click().run()
    no_exception(at)
    (message,) = [text for text in values(at.success) if text.startswith("model.tflite")]
    assert "largest probability difference to the Keras model on" in message and "(tolerance 0.0001)" in message
    name = f"{finished_runs.train_id}-litert"
    assert not by_label(at.download_button, f"Download {name}.zip").disabled
    folder = finished_runs.root / finished_runs.train_id / "exports" / name
    assert sorted(p.name for p in folder.iterdir()) == [
        "contract.json",
        "export.json",
        "image_profile.json",
        "model.tflite",
        "predict_litert.py",
    ]
    assert json.loads((folder / "export.json").read_text())["parity"]["max_abs_diff"] <= 1e-4
    # The slider holds three decimals; the export carries the operating point chosen on validation as `medimg
    # export` does (to the 6 decimals predictions.csv keeps), so the app and the CLI give one rule for one model.
    point = json.loads((finished_runs.root / finished_runs.train_id / "metrics.json").read_text())
    threshold = point["validation_operating_point"]["threshold"]
    contract = json.loads((folder / "contract.json").read_text())
    assert contract["threshold"] == pytest.approx(threshold, abs=1e-6) and round(threshold, 3) != threshold
    assert contract["decision_rule"].endswith(f">= {threshold:.4f}")
    assert any(f"≥ {threshold:.4f}**" in text for text in values(at.markdown))
