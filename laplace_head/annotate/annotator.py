"""The annotator behind the page: click sessions per image, overlays, saving.

:class:`Annotator` is the Python API the HTTP server (:mod:`laplace_head.annotate.server`)
wraps, one method per endpoint. Every image has its click history (kept for the server's
lifetime) and a lock, so that requests for one image run one at a time; the per-image work of
the base segmenter (SAM: the image embedding) lives in a small LRU cache of live sessions, each
with its own copy of the segmenter's per-image state, so switching back to a cached image costs
no encoder pass. A session that falls out of the cache is rebuilt from its click history.

The expected error of a mask is the mean over the 256 grid of ``min(p, 1 - p)``
(:func:`~laplace_head.interactive.clicks.predicted_error`) under the predictive probability
``p``: the fraction of pixels the posterior expects the mask to get wrong.
"""

from __future__ import annotations

import base64
import copy
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import numpy as np
from PIL import Image

from laplace_head.annotate.catalog import AnnotateRequestError, ImageCatalog, ImageRecord
from laplace_head.annotate.store import MaskStore
from laplace_head.dataset.images import ImageReadError, load_image_rgb
from laplace_head.interactive.clicks import predicted_error
from laplace_head.interactive.predictor import InteractivePrediction, InteractivePredictor
from laplace_head.interactive.session import Click, ClickSession
from laplace_head.segmenters.base import image_extent

#: Image statuses on the page.
NOT_STARTED, IN_PROGRESS, SAVED = "not_started", "in_progress", "saved"
#: Sort orders of the image list.
SORTS = ("name", "error")
#: The heat maps the page can show: the calibrated probability, BALD and entropy.
HEAT_MAPS = {
    "probability": "predictive_probability",
    "bald": "bald",
    "entropy": "entropy",
}
#: Default number of live sessions (image embeddings) kept.
DEFAULT_CACHE_SIZE = 8
#: Seconds a request waits for another request on the same image before it gives up (503).
LOCK_TIMEOUT_S = 30.0


def expected_error(prediction: InteractivePrediction) -> float:
    """The fraction of pixels the posterior expects the mask to get wrong (see the module)."""
    return float(predicted_error(prediction.predictive_probability).mean())


def _png_base64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_overlay(prediction: InteractivePrediction) -> dict[str, Any]:
    """The overlay of one prediction, for the page.

    ``mask``: base64 PNG at image size, 0/255 (``prediction.masks``). ``heat``: per name of
    :data:`HEAT_MAPS` a base64 8-bit PNG of the 256-grid map scaled to 0-255 by ``max`` (1 for
    the probability, the map's maximum for BALD and entropy, in nats), and that ``max``.
    """
    heat = {}
    for name, field_name in HEAT_MAPS.items():
        values = getattr(prediction, field_name)
        top = 1.0 if name == "probability" else max(float(values.max()), 1e-12)
        scaled = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
        heat[name] = {"png": _png_base64(scaled), "max": top}
    mask = prediction.masks[0].astype(np.uint8) * 255
    return {"mask": _png_base64(mask), "heat": heat}


def _segmenter_copy(segmenter: Any) -> Any:
    """A copy of ``segmenter`` sharing its model but with per-image state of its own.

    SAM keeps the image embedding in its ``SamPredictor``: the copy gets a new one on the same
    model, so each cached image keeps its embedding. random_walker's per-image state is
    replaced (not mutated) by ``set_image``, so a shallow copy is independent.
    """
    clone = copy.copy(segmenter)
    inner = getattr(segmenter, "predictor", None)
    if inner is not None:
        clone.predictor = type(inner)(segmenter.model)
    return clone


class Annotator:
    """Click sessions on a catalog of images, saving into a :class:`MaskStore`.

    Parameters
    ----------
    predictor
        The configured predictor (:meth:`InteractivePredictor.from_config`); each cached image
        gets a predictor sharing its posterior and segmenter model.
    catalog
        The images.
    store
        Where masks are saved.
    provenance
        Recorded in every sidecar: ``run_id``, ``posterior_variant`` (None for the run's own
        posterior), ``head`` and ``laplace_dir``.
    cache_size
        Live sessions (image embeddings) kept.
    lock_timeout_s
        How long a request waits for another one on the same image.
    """

    def __init__(
        self,
        predictor: InteractivePredictor,
        catalog: ImageCatalog,
        store: MaskStore,
        provenance: dict[str, Any],
        cache_size: int = DEFAULT_CACHE_SIZE,
        lock_timeout_s: float = LOCK_TIMEOUT_S,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1; got {cache_size}")
        self.predictor = predictor
        self.catalog = catalog
        self.store = store
        self.provenance = dict(provenance)
        self.cache_size = int(cache_size)
        self.lock_timeout_s = float(lock_timeout_s)
        # live sessions, least recently used first; each with a predictor of its own
        self._live: OrderedDict[str, ClickSession] = OrderedDict()
        self._clicks: dict[str, list[Click]] = {}
        self._dirty: set[str] = set()
        self._errors: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()  # the dicts above, never held while predicting

    # --- helpers ------------------------------------------------------------------------------

    @contextmanager
    def _image_lock(self, image_id: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(image_id, threading.Lock())
        if not lock.acquire(timeout=self.lock_timeout_s):
            raise AnnotateRequestError(
                503,
                f"another request on image {image_id!r} has run for over "
                f"{self.lock_timeout_s:g} s; try again",
            )
        try:
            yield
        finally:
            lock.release()

    def _new_predictor(self) -> InteractivePredictor:
        return self.predictor.with_segmenter(_segmenter_copy(self.predictor.segmenter))

    def _load_image(self, record: ImageRecord) -> np.ndarray:
        try:
            return load_image_rgb(record.image_path)
        except ImageReadError as exc:
            raise AnnotateRequestError(422, f"image {record.sample_id!r}: {exc}") from exc

    def _history(self, record: ImageRecord) -> list[Click]:
        """The click history; on first use, the clicks of a saved sidecar (to go on editing)."""
        with self._guard:
            if record.image_id in self._clicks:
                return self._clicks[record.image_id]
        clicks: list[Click] = []
        sidecar = self.store.read_sidecar(record)
        if sidecar and isinstance(sidecar.get("clicks"), list):
            try:
                clicks = [
                    Click(float(c["x"]), float(c["y"]), int(c["label"])) for c in sidecar["clicks"]
                ]
            except (KeyError, TypeError, ValueError):
                clicks = []
        with self._guard:
            return self._clicks.setdefault(record.image_id, clicks)

    def _session(self, record: ImageRecord) -> ClickSession:
        """The live session of ``record`` (the caller holds its lock), rebuilt when evicted."""
        with self._guard:
            session = self._live.get(record.image_id)
            if session is not None:
                self._live.move_to_end(record.image_id)
                return session
        session = ClickSession(self._new_predictor(), self._load_image(record))
        for click in self._history(record):
            session.add_click(click.x, click.y, click.label)
        with self._guard:
            self._live[record.image_id] = session
            while len(self._live) > self.cache_size:
                self._live.popitem(last=False)
        return session

    def _status(self, record: ImageRecord) -> str:
        if record.image_id in self._dirty:
            return IN_PROGRESS
        if self.store.is_saved(record):
            return SAVED
        return IN_PROGRESS if self._clicks.get(record.image_id) else NOT_STARTED

    def _state(self, record: ImageRecord, session: ClickSession, **extra: Any) -> dict[str, Any]:
        clicks = [{"x": c.x, "y": c.y, "label": c.label} for c in session.clicks]
        state: dict[str, Any] = {
            **self._summary(record),
            "clicks": clicks,
            "image_hw": list(session.predictor.image_hw),
            "overlay": None,
            "suggestion": None,
            "timings_ms": {},
        }
        if clicks:
            start = time.perf_counter()
            prediction = session.predict()
            predicted = time.perf_counter()
            suggestions = session.suggest(k=1)
            suggested = time.perf_counter()
            state["overlay"] = encode_overlay(prediction)
            encoded = time.perf_counter()
            error = expected_error(prediction)
            with self._guard:
                self._errors[record.image_id] = error
            state["expected_error"] = error
            state["suggestion"] = suggestions[0].to_dict() if suggestions else None
            timings = {f"{k}": 1000.0 * v for k, v in prediction.timings_s.items()}
            timings.update(
                predict=1000.0 * (predicted - start),
                suggest=1000.0 * (suggested - predicted),
                encode=1000.0 * (encoded - suggested),
            )
            state["timings_ms"] = timings
        state.update(extra)
        return state

    def _summary(self, record: ImageRecord) -> dict[str, Any]:
        error = self._errors.get(record.image_id)
        if error is None and record.image_id not in self._clicks:
            sidecar = self.store.read_sidecar(record)
            if sidecar and isinstance(sidecar.get("expected_error"), (int, float)):
                error = float(sidecar["expected_error"])
        return {
            "id": record.image_id,
            "class": record.class_name,
            "stem": record.stem,
            "split": record.split,
            "status": self._status(record),
            "n_clicks": len(self._clicks.get(record.image_id, ())),
            "expected_error": error,
        }

    # --- the API ------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the page shows in its header: run, posterior, segmenter, rule, classes."""
        return {
            **{k: self.provenance.get(k) for k in ("run_id", "posterior_variant", "head")},
            "posterior": str(self.predictor.posterior.curvature.variant),
            "base_segmenter": self.predictor.segmenter.name,
            "suggest_policy": self.predictor.suggest_policy,
            "classes": self.catalog.classes(),
            "n_images": len(self.catalog),
            "out": str(self.store.out),
            "heat_maps": list(HEAT_MAPS),
        }

    def list_images(self, class_name: str | None = None, sort: str = "name") -> list[dict]:
        """The image list, optionally of one class, sorted by name or by expected error (the
        images most likely wrong first; images without a mask yet follow, by name)."""
        if sort not in SORTS:
            raise AnnotateRequestError(400, f"sort={sort!r} is not one of {', '.join(SORTS)}")
        classes = self.catalog.classes()
        if class_name not in (None, "") and class_name not in classes:
            raise AnnotateRequestError(
                404, f"unknown class {class_name!r}; classes: {', '.join(classes)}"
            )
        rows = [
            self._summary(record)
            for record in self.catalog.records()
            if not class_name or record.class_name == class_name
        ]
        if sort == "error":
            rows.sort(key=lambda r: (r["expected_error"] is None, -(r["expected_error"] or 0.0)))
        return rows

    def image_png(self, image_id: object) -> bytes:
        """The image as decoded for the predictor (RGB), PNG bytes."""
        record = self.catalog.resolve(image_id)
        buffer = io.BytesIO()
        Image.fromarray(self._load_image(record)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def state(self, image_id: object) -> dict[str, Any]:
        """The image's clicks, status, and (with clicks) overlay, suggestion and timings."""
        record = self.catalog.resolve(image_id)
        with self._image_lock(record.image_id):
            return self._state(record, self._session(record))

    def click(self, image_id: object, x: object, y: object, label: object) -> dict[str, Any]:
        """Add a click (``(x, y)`` image pixels, label 1 positive / 0 negative); the new state.

        Raises
        ------
        AnnotateRequestError
            422 for a malformed click (not numbers, not finite, outside the image, a label
            other than 0 / 1).
        """
        record = self.catalog.resolve(image_id)
        for name, value in (("x", x), ("y", y)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise AnnotateRequestError(422, f"click {name} must be a number; got {value!r}")
            if not np.isfinite(value):
                raise AnnotateRequestError(422, f"click {name} must be finite; got {value!r}")
        if isinstance(label, bool) or label not in (0, 1) or not isinstance(label, int):
            raise AnnotateRequestError(
                422, f"click label must be 1 (positive) or 0 (negative); got {label!r}"
            )
        with self._image_lock(record.image_id):
            session = self._session(record)
            height, width = session.predictor.image_hw
            (x_min, x_max), (y_min, y_max) = image_extent((height, width))  # the click rule's
            if not (x_min <= x < x_max and y_min <= y < y_max):  # type: ignore[operator]
                raise AnnotateRequestError(
                    422,
                    f"click ({x}, {y}) lies outside the {width} x {height} image "
                    f"(x in [{x_min}, {x_max}), y in [{y_min}, {y_max}), pixel centres at "
                    "integers)",
                )
            session.add_click(float(x), float(y), int(label))  # type: ignore[arg-type]
            self._record(record, session)
            return self._state(record, session)

    def undo(self, image_id: object) -> dict[str, Any]:
        """Remove the last click; 409 when there is none."""
        record = self.catalog.resolve(image_id)
        with self._image_lock(record.image_id):
            session = self._session(record)
            if not session.clicks:
                raise AnnotateRequestError(409, "no click to undo")
            session.undo()
            self._record(record, session)
            return self._state(record, session)

    def reset(self, image_id: object) -> dict[str, Any]:
        """Remove every click of the image."""
        record = self.catalog.resolve(image_id)
        with self._image_lock(record.image_id):
            session = self._session(record)
            while session.clicks:
                session.undo()
            self._record(record, session)
            return self._state(record, session)

    def save(self, image_id: object, overwrite: object = False) -> dict[str, Any]:
        """Save the current mask and its sidecar (:class:`MaskStore`); 409 when a mask exists
        and ``overwrite`` is not true, 409 without a click."""
        if not isinstance(overwrite, bool):
            raise AnnotateRequestError(422, f"overwrite must be true or false; got {overwrite!r}")
        record = self.catalog.resolve(image_id)
        with self._image_lock(record.image_id):
            session = self._session(record)
            if not session.clicks:
                raise AnnotateRequestError(409, "nothing to save: click on the image first")
            prediction = session.predict()
            sidecar = {
                "sample_id": record.sample_id,
                "image_path": str(record.image_path),
                "image_hw": list(prediction.image_hw),
                "clicks": [{"x": c.x, "y": c.y, "label": c.label} for c in session.clicks],
                "run_id": self.provenance.get("run_id"),
                "posterior_variant": self.provenance.get("posterior_variant"),
                "posterior": str(session.predictor.posterior.curvature.variant),
                "head": self.provenance.get("head"),
                "laplace_dir": self.provenance.get("laplace_dir"),
                "base_segmenter": session.predictor.segmenter.info,
                "suggest_policy": session.predictor.suggest_policy,
                "expected_error": expected_error(prediction),
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            path = self.store.save(record, prediction.masks[0], sidecar, overwrite=overwrite)
            with self._guard:
                self._dirty.discard(record.image_id)
            return {**self._summary(record), "saved": str(path)}

    def _record(self, record: ImageRecord, session: ClickSession) -> None:
        with self._guard:
            self._clicks[record.image_id] = list(session.clicks)
            if session.clicks or self.store.is_saved(record):
                self._dirty.add(record.image_id)  # differs from the saved mask (or none saved)
            else:
                self._dirty.discard(record.image_id)
            if not session.clicks:
                self._errors.pop(record.image_id, None)
