"""Dataset page: the bundled demo, folders under the data roots (and nothing outside them), uploaded zips."""

from __future__ import annotations

import io
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from medimg.config import DatasetConfig
from medimg.datasets.sources import DEMO_GROUP_REGEX
from tests.conftest import BREASTMNIST

from .conftest import DEMO, PROJECT, by_label, no_exception, open_page, values

ZIP_LABEL = "Zip of class folders (or train/val/test folders)"
SERVER = "Folder on the server"


def metrics(at) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


def zip_bytes(
    entries: dict[str, bytes], symlinks: tuple[str, ...] = (), compression: int = zipfile.ZIP_STORED
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def demo_images(per_class: int) -> dict[str, bytes]:
    """Real demo X-rays laid out as class folders inside one top folder, as people zip them."""
    entries = {}
    for label in ("NORMAL", "PNEUMONIA"):
        for path in sorted((DEMO / "train" / label).glob("*.jpeg"))[:per_class]:
            entries[f"mydata/{label}/{path.name}"] = path.read_bytes()
    return entries


def test_bundled_demo_is_scanned_and_becomes_the_dataset_of_the_runs() -> None:
    at = open_page("dataset")
    no_exception(at)
    source = at.radio(key="dataset_source")
    assert source.options == ["Bundled demo", SERVER, "Upload a zip"] and source.value == "Bundled demo"
    assert metrics(at) == {
        "Readable images": "140",
        "Classes": "2",
        "Unreadable / skipped": "0",
        "Layout": "split folders",
    }
    assert [markdown for markdown in values(at.markdown) if markdown.startswith("**NORMAL")] == [
        "**NORMAL** (70 images)"
    ]
    captions = [caption for image in at.image for caption in image.captions]
    assert len(captions) == 16  # 8 samples per class, from the training split
    assert set(captions) <= {path.name[:22] for path in (DEMO / "train").glob("*/*")}
    # The demo has its own train/val/test folders, so the fractions do not apply.
    assert at.slider(key="ds_val").disabled and at.slider(key="ds_test").disabled
    assert "Split: the dataset's own folders" in " ".join(values(at.caption))
    assert values(at.success) == [f"Runs will use {DEMO} at 64 px, gray."]
    assert any(
        text.startswith("Tune's Automatic mode chooses the image size and colour itself") for text in values(at.caption)
    )
    assert at.session_state["dataset"] == DatasetConfig(path=str(DEMO), group_regex=DEMO_GROUP_REGEX)
    # The first-time path says what comes next.
    assert [link.label for link in at.get("page_link")] == [
        "Next: find a good model on the Tune page (automatic mode: just a time budget)"
    ]


def test_image_size_and_channel_mode_are_kept_for_the_runs() -> None:
    at = open_page("dataset")
    at.select_slider(key="ds_size").set_value(16)
    at.radio(key="ds_color").set_value("rgb").run()
    no_exception(at)
    assert values(at.success) == [f"Runs will use {DEMO} at 16 px, rgb."]
    assert at.session_state["dataset"] == DatasetConfig(
        path=str(DEMO), image_size=16, color="rgb", group_regex=DEMO_GROUP_REGEX
    )
    at.switch_page("pages/augment.py").run()
    at.switch_page("pages/dataset.py").run()
    assert at.select_slider(key="ds_size").value == 16, "the choice must survive a visit to another page"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("person(", "group_regex 'person(' is not a valid regular expression"),
        ("person", "group_regex 'person' needs one capture group"),
    ],
)
def test_a_bad_patient_id_pattern_is_explained(pattern: str, message: str) -> None:
    at = open_page("dataset")
    at.text_input(key=f"ds_group:{DEMO}").input(pattern).run()
    no_exception(at)
    assert len(at.error) == 1 and at.error[0].value.startswith(message)
    assert not at.success


def test_the_demo_brings_its_patient_id_pattern_and_another_dataset_does_not_inherit_it(tmp_path: Path) -> None:
    at = open_page("dataset")
    field = at.text_input(key=f"ds_group:{DEMO}")
    # Applied, not a grey example: the demo's README gives the personNNN / IM-NNNN prefix as the patient ID.
    assert field.value == DEMO_GROUP_REGEX and field.placeholder.startswith("empty")
    assert at.session_state["dataset"].group_regex == DEMO_GROUP_REGEX
    assert not at.warning, "the demo is patient-disjoint: no patient may appear in two splits"
    root = tmp_path / "roots"
    shutil.copytree(BREASTMNIST / "train", root / "ultrasound")
    shutil.copytree(DEMO / "train", root / "xrays")
    at.secrets["data_roots"] = [str(root)]
    at.radio(key="dataset_source").set_value(SERVER).run()
    at.selectbox(key="ds_folder").set_value(str(root / "ultrasound")).run()
    no_exception(at)
    assert at.text_input(key=f"ds_group:{root / 'ultrasound'}").value == ""
    assert at.session_state["dataset"].group_regex == "", "another dataset must not inherit the demo's pattern"
    # X-rays named as in Kermany et al.'s dataset bring that convention's patient IDs wherever they are.
    at.selectbox(key="ds_folder").set_value(str(root / "xrays")).run()
    no_exception(at)
    assert at.text_input(key=f"ds_group:{root / 'xrays'}").value == DEMO_GROUP_REGEX
    assert at.session_state["dataset"].group_regex == DEMO_GROUP_REGEX
    # Emptied by the user, it stays empty on this dataset, also in a new session that reopens the saved choice.
    at.text_input(key=f"ds_group:{root / 'xrays'}").set_value("").run()
    assert at.session_state["dataset"].group_regex == ""
    again = open_page("dataset")
    again.secrets["data_roots"] = [str(root)]
    again.run()
    assert again.session_state["dataset"].path == str(root / "xrays")
    assert again.session_state["dataset"].group_regex == ""


def test_server_folders_need_configured_data_roots() -> None:
    at = open_page("dataset")
    at.secrets["data_roots"] = []  # whatever a local secrets.toml says
    at.radio(key="dataset_source").set_value(SERVER).run()
    no_exception(at)
    assert values(at.info) == [
        "No data roots are configured. Set `MEDIMG_DATA_ROOTS` (folders separated by `:`) or `data_roots` "
        "in `.streamlit/secrets.toml`; only folders inside them can be opened. Until then runs use the current "
        f"dataset, `{DEMO}`."
    ]
    assert not at.metric and not at.selectbox


def choose_folder(at, folder: str) -> None:
    box = by_label(at.selectbox, "Folder")
    if folder not in box.options:
        box.options.append(folder)  # typed by the user: the selectbox accepts new options
    box.set_value(folder).run()


def test_a_new_dataset_starts_from_its_own_size_and_colour_and_a_choice_against_them_is_warned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seen: 28 px images shown as "Runs will use … at 64 px, gray", carried over from the demo, with no warning.
    monkeypatch.setenv("MEDIMG_DATA_ROOTS", str(BREASTMNIST.parent))
    at = open_page("dataset")
    assert (at.select_slider(key="ds_size").value, at.radio(key="ds_color").value) == (64, "gray")  # the demo's
    at.radio(key="dataset_source").set_value(SERVER).run()
    choose_folder(at, str(BREASTMNIST))
    no_exception(at)
    assert (at.select_slider(key="ds_size").value, at.radio(key="ds_color").value) == (28, "gray")
    assert at.session_state["dataset"].image_size == 28
    scan_warnings = values(at.warning)  # the real set's own: a duplicate across splits with two labels
    assert not [w for w in scan_warnings if "px" in w or "Channel mode" in w]
    at.select_slider(key="ds_size").set_value(64).run()
    assert [w for w in values(at.warning) if w not in scan_warnings] == [
        "The images are 28 px: 64 px enlarges them 2.3× (no detail is added, training is slower); 28 px is the "
        "largest size offered that does not."
    ]
    assert at.session_state["dataset"].image_size == 64, "a warning, not a refusal: the user may have a reason"
    at.select_slider(key="ds_size").set_value(28)
    at.radio(key="ds_color").set_value("rgb").run()
    (warning,) = [w for w in values(at.warning) if w not in scan_warnings]
    assert warning.startswith("Channel mode rgb, but the images suggest gray (gray: every image is single-channel)")


def test_a_folder_inside_the_data_roots_is_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIMG_DATA_ROOTS", str(DEMO.parent))
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value(SERVER).run()
    no_exception(at)
    box = by_label(at.selectbox, "Folder")
    # The demo is offered whole; its split folders are not listed on their own (an easy slip), but can be typed.
    assert str(DEMO) in box.options and str(DEMO / "train") not in box.options
    assert box.value == str(DEMO), "the dataset already chosen is preselected"
    assert metrics(at)["Readable images"] == "140"
    choose_folder(at, str(DEMO / "train"))
    no_exception(at)
    assert metrics(at)["Readable images"] == "80"
    assert metrics(at)["Layout"] == "class folders"
    assert not at.slider(key="ds_val").disabled, "without split folders the fractions apply"
    assert at.session_state["dataset"].path == str(DEMO / "train")


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_a_folder_outside_the_data_roots_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    root = tmp_path / "roots"
    root.mkdir()
    (root / "empty").mkdir()
    outside = tmp_path / "elsewhere"
    shutil.copytree(DEMO / "val", outside)  # a real dataset, so only the location can be the reason
    monkeypatch.setenv("MEDIMG_DATA_ROOTS", str(root))
    typed = str(outside) if how == "absolute" else "../elsewhere"
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value(SERVER).run()
    choose_folder(at, typed)
    no_exception(at)
    assert values(at.error) == [f"{typed} is outside the allowed data roots ({root}); refused."]
    assert not at.metric
    assert at.session_state["dataset"].path == str(DEMO)


def test_a_missing_folder_inside_the_roots_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDIMG_DATA_ROOTS", str(tmp_path))
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value(SERVER).run()
    choose_folder(at, "no-such-folder")
    no_exception(at)
    assert values(at.error) == ["no-such-folder does not exist inside the data roots."]


def test_upload_asks_for_a_zip_first() -> None:
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value("Upload a zip").run()
    no_exception(at)
    uploader = by_label(at.file_uploader, ZIP_LABEL)
    assert uploader.allowed_type == [".zip"]
    assert values(at.info) == [f"Upload a zip to continue. Until then runs use the current dataset, `{DEMO}`."]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04 but not really a zip", "the upload is not a valid zip file: "),
        (zip_bytes({"../escape.jpeg": b"x"}), "the zip entry '../escape.jpeg' points outside the archive folder"),
        (zip_bytes({"data/a/x.png": b"x"}, symlinks=("data/a/link.png",)), "the zip entry 'data/a/link.png' is a "),
        (
            zip_bytes({"data/a/zeros.png": bytes(2_000_000)}, compression=zipfile.ZIP_DEFLATED),
            "the zip entry 'data/a/zeros.png' is compressed 1024:1 (limit 200:1), which looks like a zip bomb",
        ),
    ],
    ids=["not-a-zip", "dot-dot-entry", "symlink-entry", "zip-bomb"],
)
def test_a_bad_upload_is_refused_with_the_reason(data: bytes, message: str) -> None:
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value("Upload a zip").run()
    by_label(at.file_uploader, ZIP_LABEL).set_value(("dataset.zip", data, "application/zip")).run()
    no_exception(at)
    assert len(at.error) == 1 and at.error[0].value.startswith(message)
    assert not at.metric
    assert "uploaded_dataset" not in at.session_state


def test_an_uploaded_zip_of_class_folders_is_extracted_and_scanned(runs_dir: Path) -> None:
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value("Upload a zip").run()
    by_label(at.file_uploader, ZIP_LABEL).set_value(("xrays.zip", zip_bytes(demo_images(10)), "application/zip")).run()
    no_exception(at)
    assert metrics(at)["Readable images"] == "20" and metrics(at)["Classes"] == "2"
    extracted = Path(at.session_state["uploaded_dataset"])
    assert extracted.name == "mydata" and sorted(p.name for p in extracted.iterdir()) == ["NORMAL", "PNEUMONIA"]
    assert at.session_state["dataset"].path == str(extracted)
    # Kept beside the runs under the zip's own name, not in a temporary folder cleaned after a day.
    assert extracted.parent.parent == runs_dir / "uploads" and extracted.parent.name.startswith("xrays-")

    again = open_page("dataset")  # a reload: the upload is still the source, scanned without uploading again
    no_exception(again)
    assert again.radio(key="dataset_source").value == "Upload a zip"
    assert again.session_state["dataset"].path == str(extracted)
    assert metrics(again)["Readable images"] == "20"
    assert f"Uploaded dataset kept at `{extracted}`" in " ".join(values(again.caption))


def test_an_upload_without_images_says_what_layout_is_expected() -> None:
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value("Upload a zip").run()
    by_label(at.file_uploader, ZIP_LABEL).set_value(("notes.zip", zip_bytes({"readme.txt": b"hi"}), "application/zip"))
    at.run()
    no_exception(at)
    assert len(at.error) == 1 and at.error[0].value.startswith("no image files found in ")
    assert "Expected one sub-folder per class" in at.error[0].value


def test_an_upload_with_a_single_class_is_scanned_but_not_accepted() -> None:
    one_class = {name: data for name, data in demo_images(5).items() if "/NORMAL/" in name}
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value("Upload a zip").run()
    by_label(at.file_uploader, ZIP_LABEL).set_value(("one.zip", zip_bytes(one_class), "application/zip")).run()
    no_exception(at)
    assert metrics(at)["Classes"] == "1"
    assert values(at.error) == [
        "only one class (NORMAL) has readable images; a classifier needs at least two class folders."
    ]
    assert not at.success and at.session_state["dataset"].path == str(DEMO)


def test_settings_survive_a_visit_to_the_other_sources_and_back() -> None:
    at = open_page("dataset")
    at.secrets["data_roots"] = []
    at.select_slider(key="ds_size").set_value(32)
    at.number_input(key="ds_seed").set_value(7).run()
    chosen = at.session_state["dataset"]
    assert (chosen.image_size, chosen.seed) == (32, 7)
    for source in (SERVER, "Upload a zip", "Bundled demo"):  # the other sources stop before the settings
        at.radio(key="dataset_source").set_value(source).run()
        no_exception(at)
    assert at.select_slider(key="ds_size").value == 32
    assert at.number_input(key="ds_seed").value == 7
    at.radio(key="ds_color").set_value("rgb").run()  # the next click keeps every other choice
    assert at.session_state["dataset"] == chosen.replace(color="rgb")


def test_an_empty_test_split_is_refused_before_any_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Class folders without split folders: the fractions decide, and a test fraction of 0 leaves no test split.
    for name in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(DEMO / "train" / name, tmp_path / "flat" / name)
    monkeypatch.setenv("MEDIMG_DATA_ROOTS", str(tmp_path))
    at = open_page("dataset")
    at.secrets["data_roots"] = []
    at.radio(key="dataset_source").set_value(SERVER).run()
    choose_folder(at, str(tmp_path / "flat"))
    at.slider(key="ds_test").set_value(0.0).run()
    no_exception(at)
    assert values(at.error) == [
        "The test split is empty: runs on this dataset would fail before training (no validation to choose on, or "
        "no test to evaluate on). Raise the fractions or add the split folders."
    ]


def test_the_scan_warns_about_the_classes_training_leaves_out_and_a_one_class_validation_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cases = PROJECT / "tests" / "data" / "cases"
    monkeypatch.setenv("MEDIMG_DATA_ROOTS", str(cases))
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value(SERVER).run()
    choose_folder(at, str(cases / "class-folder-names"))
    no_exception(at)
    shown = [w.value for w in at.warning]
    assert any(w.startswith("class folder 'Artefact' holds only unreadable files (1): left out") for w in shown)
    assert any(w.startswith("class folder 'COVID-19' holds no image file: left out") for w in shown)
    assert metrics(at)["Classes"] == "3"
    choose_folder(at, str(cases / "val-split-one-class"))
    no_exception(at)
    assert any(w.value.startswith("The validation split has one class: it holds only 'NORMAL'") for w in at.warning)


def test_a_manifest_offers_to_merge_labels_that_differ_only_in_case(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = PROJECT / "tests" / "data" / "cases"
    monkeypatch.setenv("MEDIMG_DATA_ROOTS", str(cases))
    at = open_page("dataset")
    at.radio(key="dataset_source").set_value(SERVER).run()
    manifest = str(cases / "csv-manifest-windows" / "manifest_labelcase.csv")
    choose_folder(at, manifest)
    no_exception(at)
    assert metrics(at)["Classes"] == "5"
    assert any("differ only in case: kept apart" in w.value for w in at.warning)
    # Seen in review: the carved validation split held none of the one-image spellings, and nothing said so.
    assert any(w.value.startswith("The validation split has no 'NORMAL' or 'Normal' images") for w in at.warning)
    # AppTest rebuilds the options from the script's list, which holds folders only; a browser keeps the typed path.
    by_label(at.selectbox, "Folder").options.append(manifest)
    at.checkbox(key="ds_merge_case").check().run()
    no_exception(at)
    assert metrics(at)["Classes"] == "2"
    assert at.session_state["dataset"].merge_label_case is True
    assert not any(w.value.startswith("The validation split has no") for w in at.warning)
