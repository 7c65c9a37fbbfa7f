"""Benchmark the annotator's click round trip against the predictor's own per-click time.

For a few images it clicks through the annotator's HTTP API on a real uvicorn server on
127.0.0.1 (one kept-alive connection, as a browser holds): click 1 at the image centre, then the
suggested click, ``--clicks`` in all. Each round trip is ``POST /api/images/<id>/click`` until
the JSON with the overlay is read: HTTP + predict + suggestion + overlay encoding (the mask PNG
at image size, three 256-grid heat maps). Right after each, the same click goes to a fresh
:class:`~laplace_head.interactive.session.ClickSession` of the same configuration, timing
``add_click`` + ``predict`` + ``suggest(k=1)``: the predictor's own per-click time.
It prints medians and their ratio (the goal is <= 1.3). With ``--browser`` the same is done in
headless Chromium (``/usr/bin/chromium``, Selenium), pressing space to accept each suggestion,
and the page's own click-to-overlay time (request, PNG decoding, drawing) is printed too.
No assertion on time.

The project: ``--config FILE [FILE ...]`` of a finished run (e.g. ``config/config.yaml
config/demo.yaml`` after ``make demo``; ``--run_id`` as in the workflow), or by default the tiny
project of the annotator's tests (random_walker, a head fitted on synthetic maps).

    .venv/bin/python bench/bench_annotate.py [--config FILE ...] [--images 3] [--clicks 5]
        [--browser]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from laplace_head.annotate import build_annotator  # noqa: E402
from laplace_head.annotate.annotator import Annotator  # noqa: E402
from laplace_head.annotate.server import BackgroundServer, create_app  # noqa: E402
from laplace_head.config.loader import load_configs  # noqa: E402
from laplace_head.dataset.images import load_image_rgb  # noqa: E402
from laplace_head.interactive.predictor import InteractivePredictor  # noqa: E402
from laplace_head.interactive.session import ClickSession  # noqa: E402
from laplace_head.layout import ProjectLayout  # noqa: E402


def paired_clicks(
    server: BackgroundServer, predictor: InteractivePredictor, image_id: str, image, n: int
) -> tuple[list[float], list[float]]:
    """Click ``n`` times (the centre, then each suggestion) through the API and, right after each
    round trip, the same click on a fresh session of ``predictor``; seconds of each.

    A round trip is ``POST /api/images/<id>/click`` until its JSON is read; the predictor's
    click is ``add_click`` + ``predict`` + ``suggest(k=1)``. Timing the two in turns keeps a
    change of the machine's load from favouring one of them.
    """
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    headers = {"Content-Type": "application/json"}
    height, width = image.shape[:2]
    click = {"x": (width - 1) / 2, "y": (height - 1) / 2, "label": 1}
    session = ClickSession(predictor, image)
    http_s, own_s = [], []
    for _ in range(n):
        start = time.perf_counter()
        connection.request("POST", f"/api/images/{image_id}/click", json.dumps(click), headers)
        response = connection.getresponse()
        state = json.loads(response.read())
        http_s.append(time.perf_counter() - start)
        if response.status != 200:
            raise RuntimeError(f"click on {image_id} answered {response.status}: {state}")
        start = time.perf_counter()
        session.add_click(click["x"], click["y"], click["label"])
        session.predict()
        session.suggest(k=1)
        own_s.append(time.perf_counter() - start)
        if state["suggestion"] is None:
            break
        suggestion = state["suggestion"]
        click = {"x": suggestion["x"], "y": suggestion["y"], "label": suggestion["label"]}
    connection.close()
    return http_s, own_s


def browser_clicks(
    server: BackgroundServer,
    annotator: Annotator,
    predictor: InteractivePredictor,
    n_images: int,
    n_clicks: int,
) -> tuple[list[float], list[float]]:
    """The page's own click-to-overlay times (ms) in headless Chromium on the first ``n_images``
    of its list: a click at the canvas centre, then space (accept the suggestion); right after
    each, the same click on a fresh session of ``predictor`` (seconds), as in
    :func:`paired_clicks`."""
    from browser.test_annotate_browser import CHROMEDRIVER, CHROMIUM, CHROMIUM_ARGS
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    version = lambda d: int(d.execute_script("return document.body.dataset.overlayVersion||'0'"))  # noqa: E731
    page_ms, own_s = [], []
    try:
        driver.get(server.url)
        WebDriverWait(driver, 600).until(
            lambda d: d.execute_script("return document.body.dataset.ready")
        )
        for index in range(n_images):
            if index:
                before = version(driver)
                ActionChains(driver).send_keys("n").perform()
                WebDriverWait(driver, 600).until(lambda d, seen=before: version(d) > seen)
            image_id = driver.execute_script(
                "return document.querySelector('#image-list li.current').dataset.id"
            )
            record = annotator.catalog.resolve(image_id)
            session = ClickSession(predictor, load_image_rgb(record.image_path))
            for click in range(n_clicks):
                before = version(driver)
                action = ActionChains(driver)
                if click == 0:
                    action.move_to_element(driver.find_element(By.ID, "canvas")).click()
                else:
                    action.send_keys(Keys.SPACE)
                action.perform()
                WebDriverWait(driver, 600).until(lambda d, seen=before: version(d) > seen)
                latency = float(driver.execute_script("return document.body.dataset.lastLatencyMs"))
                made = annotator.state(image_id)["clicks"][-1]
                start = time.perf_counter()
                session.add_click(made["x"], made["y"], made["label"])
                session.predict()
                session.suggest(k=1)
                if click:  # as for the API: after the first click
                    page_ms.append(latency)
                    own_s.append(time.perf_counter() - start)
    finally:
        driver.quit()
    return page_ms, own_s


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", help="config file(s) of a finished run")
    parser.add_argument("--run_id", help="default: training.run_id")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also in headless Chromium")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="bench_annotate_"))
    if args.config:
        config = load_configs(args.config)
        run_id = args.run_id or config["training"]["run_id"]
        layout = ProjectLayout(config["data"]["project_root"]).with_run(run_id)
    else:
        from helpers.annotate_project import make_annotate_project

        project = make_annotate_project(scratch / "project")
        config, layout = project.config, project.layout
    annotator = build_annotator(config, layout, out=scratch / "masks")
    server = BackgroundServer(create_app(annotator))
    predictor = InteractivePredictor.from_config(config, layout.laplace_dir)
    records = annotator.catalog.records()
    records = [records[i * len(records) // args.images] for i in range(args.images)]
    warm = annotator.catalog.records()[-1]  # first-call costs, on an image not measured
    paired_clicks(server, predictor, warm.image_id, load_image_rgb(warm.image_path), 2)
    http_s, own_s = [], []
    for record in records:
        image = load_image_rgb(record.image_path)
        pair = paired_clicks(server, predictor, record.image_id, image, args.clicks)
        http_s += pair[0][1:]  # click 1 includes the session's per-image work
        own_s += pair[1][1:]
    http_ms, own_ms = 1000 * statistics.median(http_s), 1000 * statistics.median(own_s)
    print(
        f"{annotator.predictor.segmenter.name}, {annotator.info()['posterior']} posterior, "
        f"suggestions: {annotator.predictor.suggest_policy}; {len(records)} images x "
        f"{args.clicks - 1} clicks after the first (medians)"
    )
    print(f"  predictor per click (predict + suggest):            {own_ms:8.1f} ms")
    print(f"  HTTP round trip (+ overlay encoding, JSON, socket): {http_ms:8.1f} ms")
    print(f"  ratio HTTP / predictor:                             {http_ms / own_ms:8.2f}")
    if args.browser:
        for record in annotator.catalog.records():  # start each image again
            annotator.reset(record.image_id)
        page, own = browser_clicks(server, annotator, predictor, len(records), args.clicks)
        page_ms, own_ms = statistics.median(page), 1000 * statistics.median(own)
        print("  in headless Chromium, paired the same way:")
        print(f"  predictor per click (predict + suggest):            {own_ms:8.1f} ms")
        print(f"  page click -> overlay drawn:                        {page_ms:8.1f} ms")
        print(f"  ratio page / predictor:                             {page_ms / own_ms:8.2f}")
    server.stop()


if __name__ == "__main__":
    main()
