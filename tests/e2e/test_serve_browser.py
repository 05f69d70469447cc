"""``esc-sweep serve``: the Gradio page in a real headless Chromium.

The server is the real command in a subprocess; the browser uploads files through the page's own
file input, and its fake microphone (Chromium's ``--use-file-for-fake-audio-capture``) plays a
recording into the live-tagging tab. Chromium and ChromeDriver are Debian packages (see
``tests/e2e/serve_support.py``); these tests skip, saying so, without them.

Set ``ESC_SWEEP_SCREENSHOTS=<folder>`` to keep the screenshots (``docs/images`` holds the ones the
docs show: a real ESC-50 clip through a bundle trained on five real classes).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.e2e.serve_support import REAL_CLASSES, browser_missing, real_clip, serve, start_chromium, trained_real_bundle
from tests.synthetic_bundle import SAMPLE_RATE, synthetic_clips, trained_synthetic_run, write_synthetic_clips

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))
WAIT_SECONDS = 180  # a shared two-core machine may take long to compute the first answer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_synthetic_run(tmp_path_factory)


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    with serve([str(trained.bundle_dir)], tmp_path_factory.mktemp("serve")) as served:
        yield served.url


@pytest.fixture(scope="module")
def tone_recording(tmp_path_factory) -> Path:
    """What the fake microphone plays: four seconds of class_2 tones (16-bit WAV, as Chromium needs)."""
    waveforms, targets = synthetic_clips(per_class=8, seed=21)
    path = tmp_path_factory.mktemp("microphone") / "class_2-tones.wav"
    sf.write(path, np.concatenate([w for w, t in zip(waveforms, targets) if t == 2]), SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory, tone_recording):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"), microphone_file=tone_recording)
    yield driver
    driver.quit()


# --------------------------------------------------------------------------
# Driving the page


def wait(driver, condition, seconds: float = WAIT_SECONDS):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.25).until(condition)


def open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-input input[type=file]"))


def upload_and_classify(driver, url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, url)
    driver.find_element(By.CSS_SELECTOR, "#audio-input input[type=file]").send_keys(str(path))
    # The upload is done when the player shows the file (the Classify button would send nothing before).
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#audio-input audio, #audio-input [data-testid='waveform-x']")
         or path.stem in d.find_element(By.ID, "audio-input").text)
    driver.find_element(By.ID, "classify").click()


def shown_labels(driver, element_id: str) -> list[tuple[str, float]]:
    """``(label, probability)`` rows of a gr.Label on the page, most likely first ([] while empty).

    Each row has a ``<meter>`` whose aria-label is the class and whose value is the probability.
    """
    rows = driver.execute_script(
        """
        const root = document.getElementById(arguments[0]);
        if (!root) return [];
        return Array.from(root.querySelectorAll('meter')).map(m => [m.getAttribute('aria-label'), m.value]);
        """, element_id)
    return [(name, float(value)) for name, value in rows]


def wait_for_labels(driver, element_id: str) -> list[tuple[str, float]]:
    return wait(driver, lambda d: shown_labels(d, element_id))


def screenshot(driver, name: str, tmp_path: Path) -> Path:
    """The page as PNG (in ``$ESC_SWEEP_SCREENSHOTS`` when set, else in the test's folder)."""
    folder = Path(os.environ.get("ESC_SWEEP_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    partial = target.with_name(f".partial-{target.name}")  # still a .png: selenium checks the suffix
    assert driver.save_screenshot(str(partial))
    os.replace(partial, target)  # never a half-written picture in docs/images
    return target


def record_live(driver) -> None:
    """Open the live tab and press the microphone's record button."""
    from selenium.webdriver.common.by import By

    tab = wait(driver, lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "button[role=tab]")
                                  if "Live microphone" in b.text])[0]
    tab.click()
    record = wait(driver, lambda d: [b for b in d.find_elements(By.CSS_SELECTOR, "#live-input button")
                                     if b.is_displayed() and "record" in (b.text + (b.get_attribute("aria-label") or "")).lower()])
    record[0].click()


# --------------------------------------------------------------------------
# Tests


def test_upload_shows_top5_labels_and_the_timeline(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    path, label = write_synthetic_clips(tmp_path, per_class=1, seed=2024)[3]
    upload_and_classify(browser, server, path)
    labels = wait_for_labels(browser, "labels-0")
    assert labels[0][0] == label == "class_3"
    assert len(labels) == 5
    probabilities = [p for _, p in labels]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0.98 <= sum(probabilities) <= 1.02  # 5 classes: the top 5 are all of them (shown rounded)
    assert path.name in browser.find_element(By.ID, "summary").text

    image = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline-0 img"))[0]
    # The browser decoded the picture: it has real pixels.
    assert wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                    image)) > 300


def test_a_file_that_is_not_audio_shows_the_error(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "notes.wav"
    path.write_text("definitely not audio")
    upload_and_classify(browser, server, path)
    wait(browser, lambda d: "cannot decode audio file notes.wav" in d.find_element(By.TAG_NAME, "body").text)
    assert not shown_labels(browser, "labels-0")


def test_the_microphone_is_tagged_live(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, server)
    record_live(browser)
    status = wait(browser, lambda d: "tagged in" in d.find_element(By.ID, "live-status").text
                  and d.find_element(By.ID, "live-status").text)
    assert "ms" in status
    # The fake microphone plays class_2 tones in a loop: once the window is full of them, so is the answer.
    wait(browser, lambda d: (shown_labels(d, "live-labels-0") or [("", 0)])[0][0] == "class_2")


@pytest.mark.slow  # 100 s: a real model on real clips in the browser; the synthetic tests above cover the page
def test_real_clip_upload_and_live_microphone(esc50_root, tmp_path_factory, tmp_path):
    """A real ESC-50 rooster through the page and through the fake microphone (and the docs' screenshots)."""
    from selenium.webdriver.common.by import By

    bundle = trained_real_bundle(tmp_path_factory, esc50_root)
    rooster = real_clip(esc50_root, "rooster")
    microphone = tmp_path / "rooster.wav"
    data, rate = sf.read(rooster, dtype="int16")
    sf.write(microphone, data, rate, subtype="PCM_16")
    examples = tmp_path / "examples"
    examples.mkdir()
    for label in REAL_CLASSES:
        shutil.copy(real_clip(esc50_root, label), examples / f"{label}{real_clip(esc50_root, label).suffix}")

    driver = start_chromium(tmp_path / "profile", microphone_file=microphone)
    try:
        with serve([str(bundle), "--examples", str(examples)], tmp_path) as served:
            upload_and_classify(driver, served.url, rooster)
            labels = wait_for_labels(driver, "labels-0")
            assert labels[0][0] == "rooster" and {name for name, _ in labels} == set(REAL_CLASSES)
            wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline-0 img"))
            screenshot(driver, "serve_upload.png", tmp_path)

            record_live(driver)
            wait(driver, lambda d: "tagged in" in d.find_element(By.ID, "live-status").text)
            # The window fills with the rooster (looped) within a few seconds.
            wait(driver, lambda d: (shown_labels(d, "live-labels-0") or [("", 0)])[0][0] == "rooster")
            screenshot(driver, "serve_microphone.png", tmp_path)
    finally:
        driver.quit()
