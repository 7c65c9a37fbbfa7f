"""The annotator's HTTP API (Starlette TestClient) on a tiny finished project: every endpoint, the
bad inputs (traversal, symlinks out, unknown ids, malformed clicks, uploads, oversized bodies),
the token, the per-image lock and session cache, saving (overwrite, a kill while saving) and a new
run's stages 1-2 on the saved folder."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.annotate_project import CLASSES, make_annotate_project, write_images
from PIL import Image

from laplace_head.annotate import build_annotator
from laplace_head.annotate.annotator import expected_error
from laplace_head.annotate.catalog import NEW_IMAGES_SPLIT, ImageCatalog
from laplace_head.annotate.server import (
    MAX_BODY_BYTES,
    TOKEN_COOKIE,
    TOKEN_HEADER,
    create_app,
    is_loopback,
    server_url,
)
from laplace_head.annotate.store import SIDECAR_KEYS
from laplace_head.dataset.images import load_image_rgb, load_mask
from laplace_head.interactive.predictor import InteractivePredictor
from laplace_head.interactive.session import ClickSession
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx2
    from starlette.testclient import TestClient

FIRST = "disc__disc_000"
SECOND = "disc__disc_001"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_annotate_project(tmp_path_factory.mktemp("annotate"))


@pytest.fixture(scope="module")
def reference(project) -> InteractivePredictor:
    """A predictor of its own, for the masks the annotator must reproduce."""
    return InteractivePredictor.from_config(project.config, project.layout.laplace_dir)


@pytest.fixture
def annotator(project, tmp_path):
    return build_annotator(project.config, project.layout, out=tmp_path / "out")


@pytest.fixture
def client(annotator) -> TestClient:
    return TestClient(create_app(annotator))


def _png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def _reference_mask(reference, project, image_id: str, clicks: list[dict]) -> np.ndarray:
    class_name, stem = image_id.split("__")
    image = load_image_rgb(project.images_root / class_name / f"{stem}.png")
    session = ClickSession(reference, image)
    for click in clicks:
        session.add_click(click["x"], click["y"], click["label"])
    return session.predict().masks[0]


def _click(client, image_id=FIRST, **body):
    return client.post(f"/api/images/{image_id}/click", json={"x": 40, "y": 30, "label": 1, **body})


# --- reading ------------------------------------------------------------------------------------


def test_index_static_and_info(client, project) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    info = client.get("/api/info").json()
    assert info["run_id"] == "t1" and info["head"] == "no_image"
    assert info["base_segmenter"] == "random_walker"
    assert info["suggest_policy"] == project.config["active_prompting"]["suggest_policy"]
    assert info["classes"] == sorted(CLASSES) and info["n_images"] == sum(CLASSES.values())
    assert info["heat_maps"] == ["probability", "bald", "entropy"]


def test_image_list_every_split_filter_and_status(client) -> None:
    rows = client.get("/api/images").json()
    assert len(rows) == sum(CLASSES.values())
    assert {row["split"] for row in rows} <= {"train", "val", "test"}
    assert len({row["split"] for row in rows}) > 1  # every split, not one
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert {row["status"] for row in rows} == {"not_started"}
    squares = client.get("/api/images", params={"class": "square"}).json()
    assert [row["class"] for row in squares] == ["square"] * CLASSES["square"]
    response = client.get("/api/images", params={"class": "triangle"})
    assert response.status_code == 404 and "triangle" in response.json()["error"]
    response = client.get("/api/images", params={"sort": "size"})
    assert response.status_code == 400 and "name, error" in response.json()["error"]


def test_sort_by_expected_error_puts_the_likeliest_wrong_first(client) -> None:
    errors = {}
    for image_id, x in ((FIRST, 40), (SECOND, 3), ("square__square_000", 70)):
        errors[image_id] = _click(client, image_id, x=x).json()["expected_error"]
    rows = client.get("/api/images", params={"sort": "error"}).json()
    ranked = sorted(errors, key=errors.get, reverse=True)
    assert [row["id"] for row in rows[:3]] == ranked
    assert all(row["expected_error"] is None for row in rows[3:])
    assert {row["status"] for row in rows[:3]} == {"in_progress"}


def test_image_is_the_decoded_rgb(client, project) -> None:
    response = client.get(f"/api/images/{FIRST}/image")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    decoded = np.asarray(Image.open(io.BytesIO(response.content)))
    assert np.array_equal(decoded, load_image_rgb(project.images_root / "disc" / "disc_000.png"))


# --- clicking -----------------------------------------------------------------------------------


def test_click_overlay_equals_the_predictor(client, project, reference) -> None:
    state = client.get(f"/api/images/{FIRST}/state").json()
    assert state["clicks"] == [] and state["overlay"] is None and state["status"] == "not_started"
    clicks = [{"x": 40.0, "y": 30.0, "label": 1}, {"x": 5.0, "y": 5.0, "label": 0}]
    for click in clicks:
        state = _click(client, **click).json()
    assert state["clicks"] == clicks and state["status"] == "in_progress"
    mask = _png(state["overlay"]["mask"])
    assert mask.shape == tuple(state["image_hw"]) == (60, 80)
    expected = _reference_mask(reference, project, FIRST, clicks)
    assert np.array_equal(mask == 255, expected) and set(np.unique(mask)) <= {0, 255}
    for name, heat in state["overlay"]["heat"].items():
        assert _png(heat["png"]).shape == (256, 256), name
    assert state["overlay"]["heat"]["probability"]["max"] == 1.0
    suggestion = state["suggestion"]
    assert suggestion["label"] in (0, 1) and 0 <= suggestion["x"] < 80
    assert set(state["timings_ms"]) >= {"predict", "suggest", "encode", "decode", "head"}
    assert 0 <= state["expected_error"] <= 0.5


def test_undo_and_reset(client) -> None:
    first = _click(client).json()
    second = _click(client, x=10, y=50, label=0).json()
    assert len(second["clicks"]) == 2
    undone = client.post(f"/api/images/{FIRST}/undo", json={}).json()
    assert undone["clicks"] == first["clicks"]
    assert undone["overlay"]["mask"] == first["overlay"]["mask"]
    reset = client.post(f"/api/images/{FIRST}/reset", json={}).json()
    assert reset["clicks"] == [] and reset["overlay"] is None
    assert reset["status"] == "not_started"
    response = client.post(f"/api/images/{FIRST}/undo", json={})
    assert response.status_code == 409 and "no click" in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"x": "40"}, "x must be a number"),
        ({"y": None}, "y must be a number"),
        ({"x": True}, "x must be a number"),
        ({"label": 2}, "label must be 1"),
        ({"label": True}, "label must be 1"),
        ({"label": 1.0}, "label must be 1"),
        ({"x": 80.0}, "outside the 80 x 60 image"),
        ({"x": 79.5}, "outside the 80 x 60 image"),  # the last pixel covers [78.5, 79.5)
        ({"y": -1}, "outside the 80 x 60 image"),
    ],
)
def test_malformed_clicks_are_refused_with_a_reason(client, body, reason) -> None:
    response = _click(client, **body)
    assert response.status_code == 422 and reason in response.json()["error"]
    assert client.get(f"/api/images/{FIRST}/state").json()["clicks"] == []


def test_non_finite_click_and_bad_bodies(client) -> None:
    nan = client.post(
        f"/api/images/{FIRST}/click",
        content=b'{"x": NaN, "y": 3, "label": 1}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422 and "finite" in nan.json()["error"]
    broken = client.post(
        f"/api/images/{FIRST}/click", content=b"{x", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400 and "not JSON" in broken.json()["error"]
    listed = client.post(f"/api/images/{FIRST}/click", json=[40, 30, 1])
    assert listed.status_code == 400 and "JSON object" in listed.json()["error"]


def test_no_uploads_and_bounded_bodies(client) -> None:
    upload = client.post(
        f"/api/images/{FIRST}/click", files={"file": ("x.png", b"\x89PNG....", "image/png")}
    )
    assert upload.status_code == 415 and "no uploads" in upload.json()["error"]
    huge = b'{"x": 1, "pad": "' + b"a" * MAX_BODY_BYTES + b'"}'
    response = client.post(
        f"/api/images/{FIRST}/click", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert client.put(f"/api/images/{FIRST}/click", json={}).status_code == 405


# --- ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("%2E%2E", 400, "is not a file name"),
        ("..%2F..%2Fetc%2Fpasswd", 400, "malformed image path"),
        ("%2Fetc%2Fpasswd", 400, "malformed image path"),
        ("disc%2Fdisc_000", 400, "malformed image path"),
        ("disc__disc_999", 404, "unknown image id"),
        ("disc__%0Adisc_000", 400, "control character"),
    ],
)
def test_bad_ids_get_a_reason(client, path, status, reason) -> None:
    for method, what in (("get", "state"), ("get", "image"), ("post", "click")):
        kwargs = {"json": {"x": 1, "y": 1, "label": 1}} if method == "post" else {}
        response = getattr(client, method)(f"/api/images/{path}/{what}", **kwargs)
        assert response.status_code == status, (path, what, response.text)
        assert reason in response.json()["error"], (path, what)


def test_symlink_out_of_the_images_root_is_refused(project, tmp_path) -> None:
    images_root = tmp_path / "images"
    write_images(images_root)
    outside = tmp_path / "secret.png"
    outside.write_bytes((images_root / "disc" / "disc_000.png").read_bytes())
    (images_root / "disc" / "leak.png").symlink_to(outside)
    inside = images_root / "disc" / "alias.png"
    inside.symlink_to(images_root / "disc" / "disc_001.png")
    annotator = build_annotator(project.config, project.layout, tmp_path / "out", images_root)
    client = TestClient(create_app(annotator))
    ids = [row["id"] for row in client.get("/api/images").json()]
    assert "disc__leak" not in ids and "disc__alias" in ids
    response = client.get("/api/images/disc__leak/image")
    assert response.status_code == 403 and "outside the images root" in response.json()["error"]
    assert client.get("/api/images/disc__alias/image").status_code == 200
    # a file swapped for a symlink out after the list was made
    target = images_root / "square" / "square_000.png"
    target.unlink()
    target.symlink_to(outside)
    response = client.get("/api/images/square__square_000/state")
    assert response.status_code == 403 and "outside the images root" in response.json()["error"]


def test_images_folder_lists_new_images(project, tmp_path) -> None:
    images_root = tmp_path / "new"
    write_images(images_root)
    (images_root / "disc" / "notes.txt").write_text("not an image")
    (images_root / "disc" / "bad\nname.png").write_bytes(b"")
    catalog = ImageCatalog.from_folder(images_root)
    assert len(catalog) == sum(CLASSES.values())
    assert {record.split for record in catalog.records()} == {NEW_IMAGES_SPLIT}
    with pytest.raises(Exception, match="not a folder"):
        ImageCatalog.from_folder(tmp_path / "missing")


# --- token --------------------------------------------------------------------------------------


def test_token_is_checked_on_every_request(annotator) -> None:
    client = TestClient(create_app(annotator, token="s3cret"))
    for path in ("/", "/static/app.js", "/api/info", f"/api/images/{FIRST}/image"):
        response = client.get(path)
        assert response.status_code == 403 and "token" in response.text, path
    assert client.get("/api/info", params={"token": "wrong"}).status_code == 403
    assert client.get("/api/info", headers={TOKEN_HEADER: "s3cret"}).status_code == 200
    page = client.get("/", params={"token": "s3cret"})
    assert page.status_code == 200 and TOKEN_COOKIE in page.headers["set-cookie"]
    assert client.get("/static/app.js").status_code == 200  # the cookie now
    assert _click(client).status_code == 200


def test_loopback_and_url() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    assert server_url("127.0.0.1", 8765, None) == "http://127.0.0.1:8765/"
    assert server_url("0.0.0.0", 80, "abc") == "http://0.0.0.0:80/?token=abc"


@pytest.mark.parametrize(("host", "has_token"), [("127.0.0.1", False), ("0.0.0.0", True)])
def test_cli_prints_the_url_with_a_token_off_loopback(
    project, tmp_path, monkeypatch, capsys, host, has_token
) -> None:
    from laplace_head import cli
    from laplace_head.annotate import server

    served = {}
    monkeypatch.setattr(server, "serve", lambda app, sock: served.update(app=app, sock=sock))
    args = ["annotate", "--config", *map(str, project.config_files), "--run", "t1"]
    cli.main([*args, "--out", str(tmp_path / "out"), "--host", host, "--port", "0"])
    served["sock"].close()
    printed = capsys.readouterr().out
    assert f"http://{host}:" in printed and ("?token=" in printed) == has_token
    client = TestClient(served["app"], base_url=f"http://{host}:8765")
    assert client.get("/api/info").status_code == (403 if has_token else 200)
    if not has_token:  # a loopback server answers loopback host names only
        rebound = TestClient(served["app"], base_url="http://evil.example:8765")
        assert rebound.get("/api/info").status_code == 400


def test_cli_port_in_use_is_a_clear_error(project, tmp_path, capsys) -> None:
    from laplace_head import cli
    from laplace_head.annotate.server import bind

    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    args = ["annotate", "--config", *map(str, project.config_files), "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        cli.main([*args, "--port", str(port)])
    taken.close()
    assert f"cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


# --- sessions -----------------------------------------------------------------------------------


def test_embedding_once_per_image_and_history_survives_eviction(
    project, tmp_path, monkeypatch
) -> None:
    calls = []
    original = RandomWalkerSegmenter._set_image
    monkeypatch.setattr(
        RandomWalkerSegmenter,
        "_set_image",
        lambda self, image: (calls.append(image.shape), original(self, image))[1],
    )
    annotator = build_annotator(project.config, project.layout, tmp_path / "out", cache_size=2)
    client = TestClient(create_app(annotator))
    first = _click(client).json()
    _click(client, SECOND)
    assert len(calls) == 2
    _click(client, FIRST, x=10, y=10, label=0)  # cached: no new per-image work
    client.get(f"/api/images/{SECOND}/state")
    assert len(calls) == 2
    _click(client, "square__square_000")  # evicts FIRST
    back = client.post(f"/api/images/{FIRST}/undo", json={}).json()
    assert len(calls) == 4  # FIRST rebuilt once, from its history
    assert back["clicks"] == first["clicks"] and back["overlay"]["mask"] == first["overlay"]["mask"]


def test_sam_keeps_one_embedding_per_cached_image(project, tmp_path) -> None:
    from helpers.tiny_sam import CountingSam

    from laplace_head.annotate.annotator import Annotator
    from laplace_head.annotate.store import MaskStore
    from laplace_head.bayes.posterior import load_posterior

    posterior = load_posterior(project.layout.laplace_dir)
    segmenter = CountingSam()
    predictor = InteractivePredictor(segmenter, posterior, 8.0, suggest_policy="bald_region")
    catalog = ImageCatalog.from_manifests(project.layout.project(), project.images_root)
    annotator = Annotator(predictor, catalog, MaskStore(tmp_path / "out"), {}, cache_size=2)
    other = "square__square_002"
    first = annotator.click(FIRST, 40, 30, 1)
    annotator.click(other, 40, 30, 1)
    again = annotator.click(FIRST, 5, 5, 0)
    assert segmenter.encoder_calls == 2  # one encoder pass per image, none on switching back
    assert first["clicks"] == again["clicks"][:1]
    # decoded against FIRST's embedding, not the one set last (``other``'s)
    reference = ClickSession(
        InteractivePredictor(CountingSam(), posterior, 8.0),
        load_image_rgb(project.images_root / "disc" / "disc_000.png"),
    )
    for click in again["clicks"]:
        reference.add_click(click["x"], click["y"], click["label"])
    live = annotator._live[FIRST].predict()
    np.testing.assert_allclose(live.base_logits, reference.predict().base_logits, atol=1e-5)


def test_requests_for_one_image_are_serialised(client) -> None:
    results = []

    def click(index: int) -> None:
        results.append(_click(client, x=10.0 + index, y=20.0).status_code)

    threads = [threading.Thread(target=click, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 6
    clicks = client.get(f"/api/images/{FIRST}/state").json()["clicks"]
    assert sorted(c["x"] for c in clicks) == [10.0 + i for i in range(6)]


def test_busy_image_and_slow_request_get_503(project, tmp_path, monkeypatch) -> None:
    annotator = build_annotator(project.config, project.layout, tmp_path / "out")
    annotator.lock_timeout_s = 0.05
    with annotator._image_lock(FIRST):
        response = TestClient(create_app(annotator)).get(f"/api/images/{FIRST}/state")
    assert response.status_code == 503 and "another request" in response.json()["error"]
    monkeypatch.setattr(annotator, "info", lambda: time.sleep(1.0) or {})
    response = TestClient(create_app(annotator, request_timeout_s=0.05)).get("/api/info")
    assert response.status_code == 503 and "longer than 0.05 s" in response.json()["error"]


# --- saving -------------------------------------------------------------------------------------


def test_save_writes_the_mask_and_sidecar_and_never_overwrites_silently(
    client, annotator, project, reference
) -> None:
    response = client.post(f"/api/images/{FIRST}/save", json={})
    assert response.status_code == 409 and "click on the image first" in response.json()["error"]
    state = _click(client).json()
    saved = client.post(f"/api/images/{FIRST}/save", json={}).json()
    path = Path(saved["saved"])
    assert path == annotator.store.out / "disc" / "disc_000.png" and saved["status"] == "saved"
    png = np.asarray(Image.open(path))
    assert png.dtype == np.uint8 and png.shape == (60, 80) and set(np.unique(png)) <= {0, 255}
    assert np.array_equal(png == 255, _reference_mask(reference, project, FIRST, state["clicks"]))
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert set(sidecar) == set(SIDECAR_KEYS)
    assert sidecar["clicks"] == state["clicks"] and sidecar["run_id"] == "t1"
    assert sidecar["head"] == "no_image" and sidecar["base_segmenter"]["name"] == "random_walker"
    assert sidecar["expected_error"] == pytest.approx(state["expected_error"])
    listed = {row["id"]: row for row in client.get("/api/images").json()}
    assert listed[FIRST]["status"] == "saved"

    _click(client, x=5, y=5, label=0)
    assert client.get("/api/images").json()[0]["status"] == "in_progress"
    refused = client.post(f"/api/images/{FIRST}/save", json={"overwrite": False})
    assert refused.status_code == 409 and "overwrite" in refused.json()["error"]
    assert np.array_equal(np.asarray(Image.open(path)), png)  # untouched
    bad = client.post(f"/api/images/{FIRST}/save", json={"overwrite": "yes"})
    assert bad.status_code == 422
    replaced = client.post(f"/api/images/{FIRST}/save", json={"overwrite": True})
    assert replaced.status_code == 200
    assert len(json.loads(path.with_suffix(".json").read_text())["clicks"]) == 2


def test_a_new_server_reopens_saved_clicks(client, annotator, project) -> None:
    clicks = _click(client).json()["clicks"]
    client.post(f"/api/images/{FIRST}/save", json={})
    again = build_annotator(project.config, project.layout, out=annotator.store.out)
    state = TestClient(create_app(again)).get(f"/api/images/{FIRST}/state").json()
    assert state["status"] == "saved" and state["clicks"] == clicks


_SAVE_SCRIPT = """
import sys
import numpy as np
from pathlib import Path
from laplace_head.annotate.catalog import ImageRecord
from laplace_head.annotate.store import MaskStore, SIDECAR_KEYS
record = ImageRecord("disc__disc_000", "disc", "disc_000", "val", Path("x.png"))
mask = np.zeros((60, 80), bool)
mask[10:50, 20:60] = True
sidecar = dict.fromkeys(SIDECAR_KEYS, None)
del sidecar["mask_md5"]
MaskStore(sys.argv[1]).save(record, mask, sidecar, overwrite=True)
"""


def test_a_server_killed_while_saving_leaves_the_old_or_the_new_file(tmp_path, repo_root) -> None:
    out = tmp_path / "out"
    old = np.zeros((60, 80), np.uint8)
    old[5:15, 5:15] = 255
    (out / "disc").mkdir(parents=True)
    Image.fromarray(old).save(out / "disc" / "disc_000.png")
    env = {**os.environ, "PYTHONPATH": str(repo_root), "LAPLACE_HEAD_KILL_AT": "annotate_save:1"}
    command = [sys.executable, "-c", _SAVE_SCRIPT, str(out)]
    killed = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert np.array_equal(np.asarray(Image.open(out / "disc" / "disc_000.png")), old)
    assert any(p.name.startswith(".tmp-") for p in (out / "disc").iterdir())  # killed mid-write
    del env["LAPLACE_HEAD_KILL_AT"]
    subprocess.run(command, env=env, check=True, timeout=120)
    new = np.asarray(Image.open(out / "disc" / "disc_000.png"))
    assert new[30, 40] == 255 and new[7, 7] == 0
    assert sorted(p.name for p in (out / "disc").iterdir()) == ["disc_000.json", "disc_000.png"]


def test_saved_folder_is_the_masks_root_of_a_new_run(client, annotator, project, tmp_path) -> None:
    from laplace_head import stages
    from laplace_head.config import load_configs
    from laplace_head.layout import ProjectLayout
    from laplace_head.settings import Runtime, split_settings, stage_params

    saved = ["disc__disc_000", "disc__disc_002", "square__square_001"]
    for image_id in saved:
        _click(client, image_id)
        _click(client, image_id, x=2, y=2, label=0)
        assert client.post(f"/api/images/{image_id}/save", json={}).status_code == 200
    overlay = tmp_path / "new_run.yaml"
    overlay.write_text(
        json.dumps(
            {
                "data": {
                    "masks_root": str(annotator.store.out),
                    "project_root": str(tmp_path / "new_project"),
                    "shard_size": 100,
                },
                "prompt_generation": {"num_promptsets_train": 1},
            }
        )
    )
    config = load_configs([*project.config_files, overlay])
    layout = ProjectLayout(config["data"]["project_root"])
    params = stage_params(config)
    report = stages.build_manifests(layout, params["build_manifests"], Runtime.from_config(config))
    assert report["n_valid"] == len(saved)
    for split in ("train", "val", "test"):
        for shard in stages.split_shards(layout, split, 100):
            stages.generate_promptsets(
                layout, split, shard, split_settings(params["generate_promptsets"], split)
            )
    written = {path.stem for path in layout.root.glob("prompt_sets/*/*.json")}
    assert written == set(saved)
    mask = load_mask(annotator.store.out / "disc" / "disc_000.png")
    assert mask.dtype == bool and mask.any()


def test_expected_error_is_the_mean_predicted_error(client, reference, project) -> None:
    state = _click(client).json()
    image = load_image_rgb(project.images_root / "disc" / "disc_000.png")
    reference.set_image(image)
    prediction = reference.predict([[40, 30]], [1])
    p = prediction.predictive_probability
    assert state["expected_error"] == pytest.approx(float(np.minimum(p, 1 - p).mean()), abs=1e-7)
    assert expected_error(prediction) == pytest.approx(state["expected_error"], abs=1e-7)
