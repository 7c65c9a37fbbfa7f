"""Weights & Biases behind one small helper.

``wandb.enabled: false`` means wandb is never imported. Otherwise the run uses
``wandb.mode`` (online | offline | disabled; offline by default), writes under
``<project_root>/wandb`` and never blocks on the network: an init failure is logged and the
stage carries on with a no-op tracker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger(__name__)


class Tracker:
    """A wandb run, or a no-op stand-in with the same methods when tracking is off."""

    def __init__(self, run: Any = None) -> None:
        self._run = run

    @property
    def enabled(self) -> bool:
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        return getattr(self._run, "id", None)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log namespaced scalars, e.g. ``{"train/loss": 0.3}``."""
        if self._run is not None:
            self._run.log(dict(metrics), step=step)

    def log_table(self, key: str, frame: Any) -> None:
        """Log a pandas DataFrame as a wandb Table."""
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Table(dataframe=frame)})

    def log_image(self, key: str, path: str | os.PathLike) -> None:
        """Log an image file."""
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Image(str(path))})

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run summary values."""
        if self._run is not None:
            self._run.summary.update(dict(values))

    def watch(self, model: Any, log_freq: int = 100) -> None:
        """Gradient and weight histograms (``wandb.watch``)."""
        if self._run is not None:
            self._run.watch(model, log="all", log_freq=log_freq)

    def log_artifact(
        self,
        path: str | os.PathLike,
        name: str,
        artifact_type: str,
        aliases: list[str] | None = None,
    ) -> None:
        """Log a file as a versioned artifact."""
        if self._run is not None:
            import wandb

            artifact = wandb.Artifact(name=name, type=artifact_type)
            artifact.add_file(str(path))
            self._run.log_artifact(artifact, aliases=aliases or ["latest"])

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def init_tracker(
    wandb_config: Mapping[str, Any],
    project_root: str | os.PathLike,
    job_type: str,
    name: str | None = None,
    run_config: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> Tracker:
    """Start a wandb run for one stage, or return a no-op tracker.

    Parameters
    ----------
    wandb_config
        The ``wandb`` section of the resolved config.
    job_type
        The stage name (``build_manifests``, ``train_head``, ...).
    run_id
        Resume this wandb run (``resume="allow"``) - used by resumed training.
    """
    if not wandb_config.get("enabled", False) or wandb_config.get("mode") == "disabled":
        return Tracker(None)
    try:
        import wandb

        wandb_dir = Path(project_root) / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=wandb_config.get("project"),
            entity=wandb_config.get("entity"),
            group=wandb_config.get("group"),
            job_type=job_type,
            name=name,
            config=dict(run_config or {}),
            dir=str(wandb_dir),
            mode=wandb_config.get("mode", "offline"),
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(silent=True, init_timeout=60),
        )
        return Tracker(run)
    except Exception as exc:  # noqa: BLE001 - tracking must never break a stage
        LOGGER.warning("wandb could not start (%s); continuing without tracking", exc)
        return Tracker(None)
