"""The annotator in a real browser: Debian's headless Chromium driven by Selenium through
chromedriver, against a server on 127.0.0.1 over a tiny finished project.

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them). The page's screenshot is kept as
``<pytest tmp dir>/annotate.png`` and, when ``LAPLACE_HEAD_SCREENSHOT`` names a file, there too
(``docs/annotate.png`` is made that way).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers.annotate_project import make_annotate_project
from PIL import Image

from laplace_head.annotate import build_annotator
from laplace_head.annotate.server import BackgroundServer, create_app
from laplace_head.dataset.images import load_image_rgb
from laplace_head.interactive.predictor import InteractivePredictor
from laplace_head.interactive.session import ClickSession

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT_ENV = "LAPLACE_HEAD_SCREENSHOT"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,800",
)
WAIT_S = 60


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_annotate_project(tmp_path_factory.mktemp("annotate_browser"))


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):
    out = tmp_path_factory.mktemp("annotations") / "masks"
    annotator = build_annotator(project.config, project.layout, out=out)
    running = BackgroundServer(create_app(annotator))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: install Debian's browser and driver with "
            "`apt-get install -y chromium chromium-driver` (.ci/run does)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        return json.loads(response.read())


def _wait_for_overlay(driver, version: int) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.overlayVersion") == str(version),
        f"the page did not draw overlay {version}",
    )


def _overlay_version(driver) -> int:
    return int(driver.execute_script("return document.body.dataset.overlayVersion || '0'"))


def test_click_suggest_undo_save_in_chromium(browser, server, project, tmp_path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.ready") == "1",
        "the page did not load its image list",
    )
    # the header names the run's head, posterior, base segmenter and click rule
    header = browser.find_element(By.ID, "run-info").text
    assert header.startswith("run ") and "no_image head, " in header
    assert "random_walker, suggestions: bald_region" in header
    items = browser.find_elements(By.CSS_SELECTOR, "#image-list li")
    assert len(items) == 6
    image_id = items[0].get_attribute("data-id")
    assert "current" in items[0].get_attribute("class")
    canvas = browser.find_element(By.ID, "canvas")
    version = _overlay_version(browser)

    # a positive click near the object's centre (the canvas shows the whole image)
    ActionChains(browser).move_to_element_with_offset(canvas, 0, 0).click().perform()
    _wait_for_overlay(browser, version + 1)
    state_url = f"{server.url}api/images/{image_id}/state"
    state = _get_json(state_url)
    assert len(state["clicks"]) == 1 and state["clicks"][0]["label"] == 1
    assert browser.find_element(By.ID, "n-clicks").text == "1"
    assert "ms" in browser.find_element(By.ID, "latency").text

    # a negative click (right button) in a corner, then accept the suggestion (space), undo (z)
    size = canvas.size
    offset = (-size["width"] // 2 + 6, -size["height"] // 2 + 6)
    ActionChains(browser).move_to_element_with_offset(canvas, *offset).context_click().perform()
    _wait_for_overlay(browser, version + 2)
    state = _get_json(state_url)
    assert [c["label"] for c in state["clicks"]] == [1, 0]
    suggestion = state["suggestion"]
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    _wait_for_overlay(browser, version + 3)
    clicks = _get_json(state_url)["clicks"]
    assert len(clicks) == 3
    assert (clicks[2]["x"], clicks[2]["y"], clicks[2]["label"]) == pytest.approx(
        (suggestion["x"], suggestion["y"], suggestion["label"])
    )
    ActionChains(browser).send_keys("z").perform()
    _wait_for_overlay(browser, version + 4)
    assert [c["label"] for c in _get_json(state_url)["clicks"]] == [1, 0]

    # the uncertainty heat map and its legend, the help overlay
    browser.find_element(By.CSS_SELECTOR, 'input[name="heat"][value="bald"]').click()
    assert browser.find_element(By.ID, "legend").is_displayed()
    assert "BALD" in browser.find_element(By.ID, "legend-name").text
    ActionChains(browser).send_keys("?").perform()
    assert browser.find_element(By.ID, "help").is_displayed()
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    assert not browser.find_element(By.ID, "help").is_displayed()

    # save (s): the PNG equals the predictor's mask for the same clicks
    ActionChains(browser).send_keys("s").perform()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.saved"), "no save"
    )
    saved = Path(browser.execute_script("return document.body.dataset.saved"))
    state = _get_json(state_url)
    assert state["status"] == "saved"
    class_name, stem = image_id.split("__")
    predictor = InteractivePredictor.from_config(project.config, project.layout.laplace_dir)
    session = ClickSession(
        predictor, load_image_rgb(project.images_root / class_name / f"{stem}.png")
    )
    for click in state["clicks"]:
        session.add_click(click["x"], click["y"], click["label"])
    png = np.asarray(Image.open(saved))
    assert np.array_equal(png == 255, session.predict().masks[0])
    status_dot = browser.find_element(By.CSS_SELECTOR, f'#image-list li[data-id="{image_id}"] .dot')
    assert "saved" in status_dot.get_attribute("class")

    screenshot = tmp_path / "annotate.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(screenshot, os.environ[SCREENSHOT_ENV])

    # a second save asks before replacing; accepting replaces the file
    ActionChains(browser).send_keys(Keys.SPACE).perform()
    _wait_for_overlay(browser, version + 5)
    browser.execute_script("delete document.body.dataset.saved")
    ActionChains(browser).send_keys("s").perform()
    alert = WebDriverWait(browser, WAIT_S, ignored_exceptions=[NoAlertPresentException]).until(
        lambda d: d.switch_to.alert, "the page did not ask before replacing the saved mask"
    )
    assert "exists" in alert.text
    alert.accept()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.saved"), "no second save"
    )
    sidecar = json.loads(saved.with_suffix(".json").read_text())
    assert len(sidecar["clicks"]) == 3

    # next image (n)
    ActionChains(browser).send_keys("n").perform()
    WebDriverWait(browser, WAIT_S).until(
        lambda d: (
            "current"
            in d.find_elements(By.CSS_SELECTOR, "#image-list li")[1].get_attribute("class")
        )
    )
