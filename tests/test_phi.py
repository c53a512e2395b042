"""Patient identifiers in DICOM headers never reach a log, a run directory, a CSV, the cache or a report.

DICOM files are built from numpy pixels with identifiers in every usual place (patient, study, institution,
physicians, free text, a private tag); a real two-class run trains on them, predicts, exports its report and model
bundle; then every byte those steps wrote is searched for the identifiers.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage

from medimg import cli, jobs
from medimg.config import DatasetConfig, ModelParams, RunSpec, TrainConfig
from medimg.datasets import scanning
from medimg.imaging import dicom
from medimg.results import bundle, predict, report
from medimg.store import runs
from tests.dicom_files import new_dicom

IDENTIFIERS = {
    "PatientName": "Quixotic^Zebulon",
    "PatientID": "MRN-PHI-77310",
    "PatientBirthDate": "19310415",
    "OtherPatientIDs": "OTHERID-PHI-5512",
    "PatientAddress": "7 Marigold Row Ottersby",
    "AccessionNumber": "ACC99120PHI",
    "InstitutionName": "Saint Quetzalcoatl Infirmary",
    "InstitutionAddress": "12 Quince Lane Wexborough",
    "ReferringPhysicianName": "Rutherford^Phineas",
    "OperatorsName": "Umbridge^Dolores",
    "StudyID": "STUDYPHI31",
    "StudyDescription": "Chest CT of Zebulon Quixotic",
}
PRIVATE_VALUE = "PRIVATE-MRN-4471"
# What must never appear: each value, and each part of a person's name on its own.
FORBIDDEN = sorted(
    {value for value in IDENTIFIERS.values()}
    | {"Quixotic", "Zebulon", "Rutherford", "Phineas", "Umbridge"}
    | {PRIVATE_VALUE, "Marigold", "Quetzalcoatl"}
)


def ct_dicom(pixels: np.ndarray) -> bytes:
    """A CT image (raw values, rescale intercept -1024, a soft-tissue window) full of identifiers."""
    data = new_dicom(CTImageStorage)
    data.Modality = "CT"
    for keyword, value in IDENTIFIERS.items():
        setattr(data, keyword, value)
    block = data.private_block(0x0011, "ACME HOSPITAL IDS", create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUE)
    data.set_pixel_data(pixels, photometric_interpretation="MONOCHROME2", bits_stored=12)
    data.RescaleIntercept, data.RescaleSlope = -1024, 1
    data.WindowCenter, data.WindowWidth = 40, 400
    stream = io.BytesIO()
    data.save_as(stream, enforce_file_format=True)
    return stream.getvalue()


def ct_image(rng: np.random.Generator, lesion: bool, frames: int = 1) -> np.ndarray:
    """Soft tissue around 0 HU (raw 1024); a lesion is a bright 10×10 square (raw 1424, +400 HU)."""
    shape = (frames, 32, 32) if frames > 1 else (32, 32)
    pixels = rng.normal(1024, 40, shape).clip(0, 4095).astype(np.uint16)
    if lesion:
        row, col = (int(v) for v in rng.integers(2, 20, 2))
        pixels[..., row : row + 10, col : col + 10] = 1424
    return pixels


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dicom-data")
    rng = np.random.default_rng(0)
    for label in ("clear", "lesion"):
        (root / label).mkdir()
        for i in range(20):
            (root / label / f"img_{i:03d}.dcm").write_bytes(ct_dicom(ct_image(rng, label == "lesion")))
    return root


def test_the_source_files_do_hold_the_identifiers(dicom_folder: Path) -> None:
    """Guards the real test below: it can only pass because medimg dropped the identifiers."""
    raw = (dicom_folder / "lesion" / "img_000.dcm").read_bytes()
    assert forbidden_in(raw) == FORBIDDEN  # the detector used below finds every one of them here
    parsed = pydicom.dcmread(dicom_folder / "lesion" / "img_000.dcm")
    assert str(parsed.PatientName) == IDENTIFIERS["PatientName"]


def test_the_decoder_keeps_pixel_elements_only(dicom_folder: Path) -> None:
    parsed = dicom.read_dicom_dataset((dicom_folder / "lesion" / "img_000.dcm").read_bytes())
    for keyword in IDENTIFIERS:
        assert keyword not in parsed, keyword
    tags = list(parsed.keys())
    assert all(tag.group in (0x0008, 0x0028, 0x7FE0) for tag in tags) and not any(tag.is_private for tag in tags)
    assert (parsed.Rows, parsed.Modality, float(parsed.WindowCenter)) == (32, "CT", 40.0)
    text = repr(parsed) + str(dicom.dicom_summary((dicom_folder / "lesion" / "img_000.dcm").read_bytes()))
    assert not [value for value in FORBIDDEN if value in text]


def forbidden_in(content: bytes) -> list[str]:
    lowered = content.lower()
    return [value for value in FORBIDDEN if value.lower().encode() in lowered]


def test_a_dicom_run_prediction_and_report_write_no_identifier(
    dicom_folder: Path,
    tmp_path: Path,
    isolated_cache: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, pydicom's included
    scan = scanning.scan(dicom_folder)
    assert scan.classes == {"clear": 20, "lesion": 20} and not scan.unreadable

    spec = RunSpec(
        kind="train",
        dataset=DatasetConfig(path=str(dicom_folder), image_size=16),
        params=ModelParams(filters=(8,), dense_units=8),
        train=TrainConfig(epochs=2, early_stopping_patience=0, reduce_lr_patience=0),
    )
    run = runs.create_run(spec, tmp_path / "runs")
    metrics = jobs.execute(run, echo=logging.getLogger("medimg.test").info)
    assert run.record["status"] == "completed" and metrics["count"] == 6

    # Predict: a single-frame and a three-frame file, with a custom window; the CSV goes to disk as the CLI does.
    rng = np.random.default_rng(1)
    single = ct_dicom(ct_image(rng, lesion=True))
    multi = ct_dicom(ct_image(rng, lesion=True, frames=3))
    predictor = predict.Predictor(run)
    results = predictor.predict(
        [("upload-1.dcm", single), ("upload-2.dcm", multi)], window=dicom.CT_WINDOWS["mediastinum"], frames={1: 2}
    )
    assert all(r.error == "" and r.probabilities for r in results)
    predictions_csv = tmp_path / "predictions.csv"
    predictions_csv.write_text(predict.predictions_csv(results, predictor.class_names))
    shown = [str(predict.dicom_summary(data)) for data in (single, multi)]  # what the Predict page shows
    (tmp_path / "upload.dcm").write_bytes(multi)
    cli_csv = tmp_path / "cli-predictions.csv"
    assert cli.main(["predict", str(run.path), str(tmp_path / "upload.dcm"), "--out", str(cli_csv)]) == 0

    report.write_report(run, run.path / "report.html", threshold=0.5)
    with zipfile.ZipFile(io.BytesIO(bundle.model_bundle(run))) as archive:
        bundled = {name: archive.read(name) for name in archive.namelist()}

    written = [p for p in run.path.rglob("*") if p.is_file()] + [predictions_csv, cli_csv]
    written += [p for p in isolated_cache.rglob("*") if p.is_file()]
    assert {"run.json", "events.jsonl", "metrics.json", "predictions.csv", "model.keras", "report.html"} <= {
        p.name for p in written
    }
    assert any(p.suffix == ".npy" for p in written) and any("tfevents" in p.name for p in written)
    leaks = {str(p): forbidden_in(p.read_bytes()) for p in written}
    leaks.update({f"bundle:{name}": forbidden_in(content) for name, content in bundled.items()})
    leaks["scan report"] = forbidden_in(json.dumps(scan.to_dict(include_files=True), default=str).encode())
    leaks["Predict page DICOM summaries"] = forbidden_in("\n".join(shown).encode())
    out, err = capfd.readouterr()
    leaks["stdout and stderr"] = forbidden_in((out + err).encode())
    leaks["log records"] = forbidden_in("\n".join(r.getMessage() for r in caplog.records).encode())
    assert {where: found for where, found in leaks.items() if found} == {}
    assert len(caplog.records) > 0  # the run did log (its epochs), so the log check looked at something
