"""The dashboard in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`.

One journey, as a user would take it: demo dataset → augmentation preview → a 2-trial search of 1 epoch → train
with the best parameters (refreshing the page mid-run) → evaluate → predict a demo image with Grad-CAM → runs.
A screenshot of each page and the page-open timings go to test-output/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from medimg.store import runs
from tests.conftest import DEMO, PROJECT

pytestmark = pytest.mark.browser
CHROMIUM = os.environ.get("MEDIMG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = PROJECT / "test-output"
RUN_TIMEOUT_MS = 240_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(folder: Path) -> Iterator[dict]:
    """`streamlit run app.py` on a free port with its own runs folder; stopped (and its runs killed) on exit."""
    port = free_port()
    runs_dir = folder / "runs"
    runs_dir.mkdir()
    env = {**os.environ, "MEDIMG_RUNS_DIR": str(runs_dir), "TF_CPP_MIN_LOG_LEVEL": "3"}
    log = open(folder / "streamlit.log", "w")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=PROJECT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                if response.read() == b"ok":
                    break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError(f"streamlit did not start; log: {Path(log.name).read_text()[-2000:]}") from None
            time.sleep(0.2)
    yield {
        "url": url,
        "runs": runs_dir,
        "health_s": time.perf_counter() - started,
        "started": started,
        "log": Path(log.name),
    }
    process.terminate()
    process.wait(timeout=20)
    log.close()
    for run_json in runs_dir.glob("*/run.json"):  # leave no run process behind
        pid = runs.Run(run_json.parent).pid  # the run's own, or its launcher's while it is queued
        if pid:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    assert "Traceback" not in Path(log.name).read_text(), Path(log.name).read_text()[-3000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    with streamlit_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture(scope="module")
def page(server: dict) -> Iterator:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium (bash .ci/install)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        tab.set_default_timeout(60_000)
        yield tab
        context.close()
        browser.close()


def wait_idle(page, settle_ms: int = 300) -> None:
    """Streamlit shows a 'running' indicator while the script runs; wait until the page has settled."""
    page.wait_for_selector("[data-testid='stApp']")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]') ||"
        " !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=60_000,
    )
    page.wait_for_timeout(settle_ms)


def open_page(page, title: str, timings: dict) -> None:
    started = time.perf_counter()
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    page.get_by_role("heading", name=title).first.wait_for()
    wait_idle(page, settle_ms=0)
    timings[title] = round(time.perf_counter() - started, 3)  # click → page drawn and its script finished
    page.wait_for_timeout(300)


def shoot(page, name: str) -> None:
    OUTPUT.joinpath("screenshots").mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "screenshots" / f"{name}.png"), full_page=True)


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_idle(page)


def wait_count(page, selector: str, at_least: int, timeout_ms: int = 60_000) -> int:
    """Wait until the page shows at least `at_least` elements matching `selector` (images load after the text)."""
    page.locator(selector).nth(at_least - 1).wait_for(timeout=timeout_ms)
    return page.locator(selector).count()


def status_text(page) -> str:
    metric = page.locator("[data-testid='stMetric']", has_text="Status").first
    return metric.locator("[data-testid='stMetricValue']").inner_text().strip()


def wait_for_status(page, wanted: tuple[str, ...], timeout_ms: int = RUN_TIMEOUT_MS) -> str:
    deadline = time.time() + timeout_ms / 1000
    while time.time() < deadline:
        try:
            status = status_text(page)
            if status in wanted:
                return status
            assert status != "failed", page.locator("[data-testid='stAlert']").all_inner_texts()
        except Exception as error:  # the fragment may be mid-redraw
            if isinstance(error, AssertionError):
                raise
        page.wait_for_timeout(500)
    raise AssertionError(f"status never became {wanted}; last: {status_text(page)}")


def test_user_journey(server: dict, page) -> None:
    from playwright.sync_api import expect

    timings: dict[str, float] = {}
    started = time.perf_counter()
    page.goto(server["url"])
    page.get_by_text("Readable images").wait_for()
    wait_idle(page)
    first_page_s = time.perf_counter() - server["started"]
    timings["first page (from browser open)"] = round(time.perf_counter() - started, 3)
    # Dataset: the bundled demo is scanned and its real images are shown.
    assert page.locator("[data-testid='stMetric']", has_text="Readable images").inner_text().endswith("140")
    assert wait_count(page, "[data-testid='stImage']", 16) >= 16
    shoot(page, "1-dataset")

    # Augment: turning on a flip shows the preview grid made by the training layers.
    open_page(page, "Augment", timings)
    page.get_by_text("Horizontal flip").click()
    wait_idle(page)
    page.get_by_text("#12").wait_for(timeout=60_000)
    assert wait_count(page, "[data-testid='stImage'] img", 13) >= 13
    # Every strength slider is drawn by the browser: a bad sprintf format ('%g%') replaced six of them with an error.
    for label in ("Rotation", "Zoom", "Brightness", "Noise"):
        expect(page.locator("[data-testid='stSlider']", has_text=label).first).to_be_visible()
    assert page.get_by_text("unexpected placeholder").count() == 0
    shoot(page, "2-augment")
    # A reload is a new session: the choice is still there (kept beside the runs, not only in the browser session).
    page.reload()
    page.get_by_text("#12").wait_for(timeout=60_000)
    wait_idle(page)
    assert page.get_by_label("Horizontal flip").is_checked()

    # Tune: a 2-trial search of 1 epoch, launched as its own process and watched live.
    open_page(page, "Tune", timings)
    page.get_by_text("Find a good model in a time budget").wait_for()  # Automatic is what a new user sees first
    page.get_by_text("Advanced", exact=True).click()
    wait_idle(page)
    set_number(page, "Trials", 2)
    set_number(page, "Epochs per trial", 1)
    launched = time.perf_counter()
    page.get_by_role("button", name="Start search").click()
    page.wait_for_url(re.compile(r"run=tune-"), timeout=30_000)
    search_id = re.search(r"run=(tune-[\w-]+)", page.url).group(1)
    wait_for_status(page, ("running", "completed"))
    run_timings = {"search: Start → first live status": round(time.perf_counter() - launched, 3)}
    wait_for_status(page, ("completed",))
    run_timings["search (2 trials × 1 epoch + final evaluation): Start → completed"] = round(
        time.perf_counter() - launched, 3
    )
    page.get_by_text(re.compile(r"Best trial \d+: val_auc")).wait_for(timeout=30_000)
    # The picker's label follows the run's status (it said "· running" long after the end before).
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=stSelectbox] input')]"
        ".some(i => /tune-[\\w-]+ · completed/.test(i.value) || /tune-[\\w-]+ · completed/.test(i.placeholder))"
        " || /tune-[\\w-]+ · completed/.test(document.body.innerText)",
        timeout=30_000,
    )
    # Both trials ended and are counted (a one-epoch trial may have called every image one class: noted).
    trials_shown = page.locator("[data-testid='stMetric']", has_text="Trials").inner_text()
    assert re.search(r"2 of 2( \(\d collapsed\))?$", trials_shown), trials_shown
    assert wait_count(page, ".js-plotly-plot", 2) >= 2  # objective by trial, parallel coordinates
    shoot(page, "3-tune")

    # Train with the best parameters; refresh mid-run and check the page reattaches to the same run.
    page.get_by_role("button", name="Train with these").click()
    page.get_by_role("heading", name="Train").first.wait_for()
    wait_idle(page)
    set_number(page, "Epochs", 3)
    launched = time.perf_counter()
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url(re.compile(r"run=train-"), timeout=30_000)
    run_id = re.search(r"run=(train-[\w-]+)", page.url).group(1)
    wait_for_status(page, ("running", "completed"))
    page.reload()
    wait_idle(page)
    assert run_id in page.url
    page.locator("[data-testid='stMetric']", has_text="Status").first.wait_for()
    # Reattached to the same run (its id is the selected run), not a new one or none.
    page.wait_for_function(
        "id => [...document.querySelectorAll('[data-testid=stSelectbox] input')].some(i => i.value.includes(id))"
        " || document.body.innerText.includes(id)",
        arg=run_id,
    )
    assert len(list(server["runs"].glob("train-*"))) == 1
    assert page.get_by_label("Epochs", exact=True).input_value() == "3"  # the run's own settings, shown read-only
    assert page.get_by_role("button", name="Start training").is_disabled()
    # A second tab on the same address shows the same run, with Start disabled there too.
    second = page.context.new_page()
    second.goto(page.url)
    second.locator("[data-testid='stMetric']", has_text="Status").first.wait_for(timeout=60_000)
    second.wait_for_function(
        "id => [...document.querySelectorAll('[data-testid=stSelectbox] input')].some(i => i.value.includes(id))"
        " || document.body.innerText.includes(id)",
        arg=run_id,
    )
    assert second.get_by_role("button", name="Start training").is_disabled() or "completed" in status_text(second)
    second.close()
    wait_for_status(page, ("completed",))
    run_timings["training (3 epochs, with a reload and a second tab): Start → completed"] = round(
        time.perf_counter() - launched, 3
    )
    page.get_by_text("Test AUC").wait_for()
    expect(page.get_by_role("button", name="Start training")).to_be_enabled(timeout=30_000)
    assert wait_count(page, ".js-plotly-plot", 3) >= 3  # loss, accuracy, AUC curves
    history = json.loads((server["runs"] / run_id / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3]
    shoot(page, "4-train")

    # Back on Tune, which shows the finished search: a second search is followed at once, and Stop mid-trial ends
    # it with the interrupted trial recorded as stopped, never as completed.
    open_page(page, "Tune", {})
    page.get_by_text("Search settings").click()
    set_number(page, "Epochs per trial", 200)
    page.get_by_role("button", name="Start search").click()
    page.wait_for_url(lambda url: "run=tune-" in url and search_id not in url, timeout=30_000)
    second_id = re.search(r"run=(tune-[\w-]+)", page.url).group(1)
    wait_for_status(page, ("running",))
    # The picker's label follows queued → running too (it said "· queued" while the run trained).
    page.wait_for_function(
        "id => [...document.querySelectorAll('[data-testid=stSelectbox] input')]"
        ".some(i => (i.value + i.placeholder).includes(id + ' · running'))"
        " || document.body.innerText.includes(id + ' · running')",
        arg=second_id,
        timeout=30_000,
    )
    page.get_by_text(re.compile(r"trial 1 · epoch \d+: batch")).wait_for(timeout=60_000)  # inside the first trial
    page.get_by_role("button", name="Stop", exact=True).click()
    wait_for_status(page, ("stopped",))
    folder = server["runs"] / second_id
    stopped = json.loads((folder / "run.json").read_text())
    # Early stopping can end a trial just before the click lands; whichever trial Stop cut short is STOPPED.
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    cut = sorted({event["trial"] for event in events if event["type"] == "trial_stopped"})
    assert stopped["status"] == "stopped" and stopped["trials_stopped"] == cut
    trials = json.loads((folder / "trials.json").read_text())
    assert [t["status"] for t in trials if t["trial_id"] in cut] == ["STOPPED"] * len(cut)

    open_page(page, "Evaluate", timings)
    page.get_by_text("Balanced accuracy").wait_for()
    # The threshold starts at the operating point chosen on validation, and says so.
    page.get_by_text(re.compile(r"Threshold \d\.\d{3}: Youden's J on the validation split")).wait_for()
    assert wait_count(page, ".js-plotly-plot", 3) >= 3  # score histogram, confusion matrix, ROC
    shoot(page, "5-evaluate")

    # Predict: upload a real demo X-ray and see probabilities and the Grad-CAM overlay.
    open_page(page, "Predict", timings)
    image = sorted((DEMO / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    page.locator("input[type='file']").set_input_files(str(image))
    page.get_by_text(re.compile("Grad-CAM for (NORMAL|PNEUMONIA)")).wait_for(timeout=90_000)
    page.get_by_text("Class probabilities").wait_for()
    page.get_by_role("button", name=re.compile("Download all predictions")).wait_for()
    shoot(page, "6-predict")

    open_page(page, "Runs", timings)
    compared = page.locator("[data-testid='stMultiSelect']", has_text="Runs to compare").first
    assert run_id in compared.inner_text()  # the newest runs are preselected for comparison
    wait_count(page, ".js-plotly-plot", 1)
    shoot(page, "7-runs")
    for title in ("Dataset", "Runs"):  # TensorFlow-free pages, opened again now that the server is warm
        open_page(page, title, timings)
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "timings.json").write_text(
        json.dumps(
            {
                "server_health_s": round(server["health_s"], 3),
                "first_page_usable_s": round(first_page_s, 3),
                "page_open_s": timings,
                "run_s": run_timings,
            },
            indent=2,
        )
    )


def test_dataset_settings_survive_switching_sources_and_back(server: dict, page) -> None:
    page.goto(server["url"])
    page.get_by_text("Readable images").wait_for()
    wait_idle(page)
    set_number(page, "Seed", 7)
    page.get_by_text(re.compile(r"Runs will use .* at 64 px, gray")).wait_for()
    # Each source's page is seen before the next click, as a user sees it.
    for source, shown in (
        ("Folder on the server", "No data roots are configured"),
        ("Upload a zip", "Upload a zip to continue."),
        ("Bundled demo", "Readable images"),
    ):
        page.get_by_text(source, exact=True).click()
        page.get_by_text(shown).first.wait_for()
        wait_idle(page)
        # The settings stay on the page whichever source is chosen (a widget not drawn could come back at 0).
        assert settled_value(page, "Seed") == "7", source
    page.get_by_text(re.compile(r"Runs will use .* at 64 px, gray")).wait_for()
    page.get_by_text("rgb", exact=True).click()  # the next click keeps every other choice
    wait_idle(page)
    page.get_by_text(re.compile(r"Runs will use .* at 64 px, rgb")).wait_for()
    assert settled_value(page, "Seed") == "7"


def settled_value(page, label: str) -> str:
    """The value of the one input labelled `label` once the run drawing the page has ended. While a rerun redraws a
    widget at a new place (the layout above it changed), Streamlit keeps the old element on the page, marked
    data-stale, until the run ends: CI once saw two "Seed" inputs at once (both 7), and before that read a 0, maybe
    from such an element. Call it after something the new run draws has appeared, so the run has begun."""
    from playwright.sync_api import expect

    page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')", timeout=60_000)
    field = page.get_by_label(label, exact=True)
    expect(field).to_have_count(1, timeout=30_000)
    return field.input_value()


@pytest.mark.parametrize("path", ["evaluate", "runs"])
def test_a_deep_link_as_a_fresh_servers_first_request_goes_through_the_app(tmp_path: Path, page, path: str) -> None:
    with streamlit_server(tmp_path) as cold:
        page.goto(f"{cold['url']}/{path}")
        page.get_by_role("heading", name=path.capitalize()).first.wait_for()
        wait_idle(page)
        links = page.locator("[data-testid='stSidebarNav'] a").all_inner_texts()
        titles = [text.split("\n")[-1].strip() for text in links]
        assert titles == ["Dataset", "Augment", "Tune", "Train", "Evaluate", "Predict", "Runs"]
        # app.py's own set-up ran: its sidebar note is there.
        page.get_by_text("medimg · research tool, not for clinical use").wait_for()
