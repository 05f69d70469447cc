"""``esc-sweep serve``: upload clips through the page in a real headless Chromium.

The server is the real command in a subprocess; the browser is Debian's
``chromium`` driven by ``chromedriver`` through Selenium. CI installs both with

    apt-get install -y chromium chromium-driver

and the browser tests skip, saying so, where they are absent. The JSON API and
the upload errors are checked with plain HTTP requests (no browser needed).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import numpy as np
import soundfile as sf

from tests.synthetic_bundle import stereo, synthetic_clips, trained_synthetic_run, write_synthetic_clips

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found: apt-get install -y chromium chromium-driver (Debian package {package})"
    return None


needs_browser = pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_synthetic_run(tmp_path_factory)


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """``esc-sweep serve <bundle> --port 0``; yields its base URL (read from its first lines)."""
    log_path = tmp_path_factory.mktemp("serve") / "stderr.log"
    with open(log_path, "w") as stderr:  # a file, not a pipe: request logs can never block the server
        process = subprocess.Popen(
            [sys.executable, "-m", "esc_sweep", "serve", str(trained.bundle_dir), "--port", "0",
             "--max-upload-mb", "1"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    url, seen, deadline = None, [], time.monotonic() + 120
    while url is None and time.monotonic() < deadline and process.poll() is None:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith("Serving on "):
            url = line.split()[2]
    if url is None:
        process.kill()
        pytest.fail(f"serve did not start: {''.join(seen)}{log_path.read_text()[-3000:]}")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def upload_through_page(driver, url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    old_page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, "audio-file").send_keys(str(path))
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 120).until(lambda d: _is_gone(old_page))  # the answer page has loaded


def _is_gone(element) -> bool:
    """EC.staleness_of, also for the error Chromium gives while the old page is torn down."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        element.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as err:
        if "does not belong to the document" in str(err):
            return True
        raise
    return False


def page_predictions(driver) -> list[tuple[str, float]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#predictions tr.prediction")
    return [
        (row.find_element(By.CSS_SELECTOR, "td.label").text,
         float(row.find_element(By.CSS_SELECTOR, "td.probability").text.rstrip("%")) / 100)
        for row in rows
    ]


@needs_browser
def test_upload_shows_top5_labels_and_a_spectrogram(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    files = write_synthetic_clips(tmp_path, per_class=1, seed=2024)
    path, label = files[3]  # an easy held-out tone of class_3
    upload_through_page(browser, server, path)

    predictions = page_predictions(browser)
    assert len(predictions) == 5
    assert predictions[0][0] == label == "class_3"
    probabilities = [p for _, p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0.99 <= sum(probabilities) <= 1.01  # 5 classes: the top 5 are all of them
    assert browser.find_element(By.ID, "result-file").text.startswith(path.name)

    image = browser.find_element(By.ID, "spectrogram")
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    # The browser decoded the PNG: it has real pixels.
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 300


@needs_browser
def test_second_upload_from_the_answer_page_stereo_44k_flac(server, browser, tmp_path):
    waveforms, targets = synthetic_clips(per_class=1, seed=99, sample_rate=44100)
    path = tmp_path / "field-recording.flac"
    sf.write(path, stereo(waveforms[0]), 44100)
    upload_through_page(browser, server, path)
    assert page_predictions(browser)[0][0] == f"class_{targets[0]}"
    # From the answer page, the form works again.
    files = write_synthetic_clips(tmp_path / "more", per_class=1, seed=5)
    path, label = files[4]
    upload_through_page(browser, server, path)
    assert page_predictions(browser)[0][0] == label


@needs_browser
def test_a_file_that_is_not_audio_shows_an_error_on_the_page(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "notes.wav"
    path.write_text("definitely not audio")
    upload_through_page(browser, server, path)
    assert "cannot decode audio file notes.wav" in browser.find_element(By.ID, "error").text
    assert not browser.find_elements(By.ID, "results")


# --------------------------------------------------------------------------
# Plain HTTP: the JSON API and upload limits


def post_file(url: str, name: str, data: bytes, field: str = "audio") -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_json_api_and_upload_errors(server, tmp_path):
    path, label = write_synthetic_clips(tmp_path, per_class=1, seed=31)[1]
    status, answer = post_file(server + "api/predict", path.name, path.read_bytes())
    assert status == 200, answer
    assert answer["file"] == path.name and answer["top"][0]["label"] == label == "class_1"
    assert len(answer["top"]) == 5

    status, answer = post_file(server + "api/predict", "empty.wav", b"")
    assert status == 400 and "empty" in answer["error"]
    status, answer = post_file(server + "api/predict", "big.wav", b"\0" * (2 * 2**20))  # limit: 1 MiB
    assert status == 413 and "limit is 1.00 MiB" in answer["error"]
    with urllib.request.urlopen(server + "health", timeout=30) as response:
        assert response.read() == b"ok\n"  # still serving after the errors


def test_twenty_concurrent_uploads_are_all_answered_and_an_hour_claim_is_refused_from_the_header(server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    files = write_synthetic_clips(tmp_path / "many", per_class=4, seed=77)[:20]
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda item: post_file(server + "api/predict", item[0].name, item[0].read_bytes()),
                                files))
    assert [status for status, _ in answers] == [200] * 20, answers
    assert sum(a["top"][0]["label"] == label for (_, a), (_, label) in zip(answers, files)) >= 16

    # An hour of silence packs into a small FLAC: refused from its header, before any decoding.
    hour = tmp_path / "hour.flac"
    with sf.SoundFile(hour, "w", samplerate=8000, channels=1, format="FLAC") as out:
        block = np.zeros(8000 * 60, dtype="int16")
        for _ in range(60):
            out.write(block)
    assert hour.stat().st_size < 1_000_000
    started = time.monotonic()
    status, answer = post_file(server + "api/predict", "hour.flac", hour.read_bytes())
    assert status == 400 and "over the 600 s limit" in answer["error"], answer
    assert time.monotonic() - started < 10
