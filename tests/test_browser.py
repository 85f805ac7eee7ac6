"""The app in a real browser: Debian's chromium driven by playwright, against a local Streamlit server.

Only 127.0.0.1 is contacted. The test skips when chromium or playwright is missing.
"""

import csv
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest

from core.labels_csv import read_labels_csv
from core.run_files import RunFiles
from tests.test_app import build_small_run

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PROJECT_ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 90
STEP_MILLISECONDS = 60_000

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install playwright"
)
expect = playwright_api.expect
if not CHROMIUM.exists():
    pytest.skip("chromium is not installed: apt-get install -y chromium", allow_module_level=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with status {server.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer on {url} within {STARTUP_SECONDS} s")


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    run_dir = build_small_run(tmp_path_factory.getbasetemp() / "app_run")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("streamlit") / "server.log", "w", encoding="utf-8")  # noqa: SIM115
    command = [
        sys.executable, "-m", "streamlit", "run", "app/Home.py", "--server.headless", "true",
        "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]
    environment = {**os.environ, "LABELER_RUNS_DIR": str(run_dir.parent)}
    server = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, server)
        yield url, run_dir
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_open_class_neighbours_and_download(served_run, tmp_path):
    url, run_dir = served_run
    labels = read_labels_csv(RunFiles(run_dir).labels)
    classes = labels.classes[:, 0].tolist()
    largest = max(set(classes), key=classes.count)
    run_query = quote(str(run_dir))

    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(accept_downloads=True)
            page.set_default_timeout(STEP_MILLISECONDS)

            # Open a class of the primary head.
            page.goto(f"{url}/Classes?run={run_query}")
            page.get_by_role("heading", name="Classes", exact=True).wait_for()
            page.locator('[data-testid="stSelectbox"]').nth(1).click()
            page.get_by_role("option").filter(has_text=f"{largest} · ").first.click()
            page.get_by_text(f"of {classes.count(largest)}").first.wait_for()
            # Select boxes have a toggle button labelled "Open" too, but without text.
            open_buttons = page.locator("button:visible").filter(has_text=re.compile(r"^Open$"))
            expect(open_buttons).to_have_count(min(classes.count(largest), 48), timeout=STEP_MILLISECONDS)

            # Open an image, then its neighbours.
            open_buttons.first.click()
            page.get_by_text("Nearest neighbours").wait_for()
            page.get_by_role("link", name="Explore the neighbours").click()
            page.get_by_role("heading", name="Neighbours", exact=True).wait_for()
            page.get_by_text("nearest images").wait_for()
            expect(open_buttons).to_have_count(12, timeout=STEP_MILLISECONDS)

            # Download the labels.
            page.goto(f"{url}/Edit_and_export?run={run_query}")
            page.get_by_role("heading", name="Export", exact=True).wait_for()
            with page.expect_download() as download_info:
                page.get_by_role("button", name="Download labels_k4.csv").click()
            saved = tmp_path / download_info.value.suggested_filename
            download_info.value.save_as(saved)
        finally:
            browser.close()

    with open(saved, encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert saved.name == "labels_k4.csv"
    assert [row["path"] for row in rows] == labels.paths
    assert [int(row["class"]) for row in rows] == classes
    assert {row["class_name"] for row in rows} == {f"class {index}" for index in set(classes)}
