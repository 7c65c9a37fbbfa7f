"""Stage 5: train the NoImageHead (MAP) on a split's packed HDF5, resumably.

Optimiser AdamW with a constant learning rate; loss ``BCE + dice_lambda * soft Dice``; model
selection by per-image mean validation IoU (:mod:`laplace_head.model.metrics`); early stopping after
``early_stop_patience`` epochs without a better IoU; at most ``num_epochs`` epochs.

Mixed precision: on CUDA ``amp: true`` means fp16 autocast with a GradScaler. On CPU AMP is
**off** whatever the config says: bf16 autocast made a training step of this tiny head ~6x
slower than fp32 on the 2-core development CPU (AMD EPYC without native bf16 instructions:
1.2 vs 7.7 samples/s), the casts costing more than the arithmetic saves; and fp32 keeps the
bitwise equality of a resumed and an uninterrupted run that the CPU path guarantees.

Determinism and resume: weight initialisation uses ``derive_seed(seed, "init")``; the batch
order of epoch ``e`` uses ``derive_seed(seed, "batch_order", e)`` (never a generator advanced
across epochs); the loop uses no other randomness. After every epoch the full state is saved
(:mod:`laplace_head.training.checkpoint`), so a run killed at any moment resumes at the epoch
after the
last completed one and, on CPU with the same thread count, ends with bitwise-identical
``best.pt`` weights. On CUDA, cuDNN kernels make resumed runs equal only to float tolerance.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from laplace_head.errors import LaplaceHeadError
from laplace_head.model.head import NoImageHead
from laplace_head.model.losses import bce_dice_loss
from laplace_head.model.metrics import SegmentationMeter
from laplace_head.settings import Runtime
from laplace_head.training import checkpoint as ckpt
from laplace_head.training.dataset import H5SegmentationDataset, make_loader
from laplace_head.util.atomic import atomic_write_json, atomic_write_yaml
from laplace_head.util.devices import resolve_device
from laplace_head.util.seeding import derive_seed
from laplace_head.util.tracking import init_tracker

LOGGER = logging.getLogger(__name__)
# Test hook: SIGKILL this process after N optimiser steps (a real kill, for the resume tests).
KILL_AFTER_STEPS_ENV = "LAPLACE_HEAD_KILL_AFTER_STEPS"


@dataclass(frozen=True)
class TrainingSettings:
    """The ``head`` and ``training`` values stage 5 needs (see config/schema.yaml)."""

    channels_in: int = 3
    hidden_channels: int = 16
    batch_size: int = 8
    num_epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dice_lambda: float = 0.5
    amp: bool = True
    early_stop_patience: int = 5
    logit_clip: float = 20.0
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    in_memory: str = "auto"

    @classmethod
    def from_params(cls, params: Mapping[str, Any], runtime: Runtime | None = None):
        """From ``stage_params(config)["train_head"]`` and the runtime's worker count, device
        and in-RAM loading (defaults without a runtime)."""
        runtime = runtime or Runtime()
        return cls(
            **params["head"],
            **params["training"],
            num_workers=runtime.num_workers,
            device=runtime.training_device,
            in_memory=runtime.in_memory,
        )

    def as_config(self) -> dict:
        """A ``{"head": ..., "training": ...}`` mapping for callers without a config file."""
        values = asdict(self)
        head = {k: values.pop(k) for k in ("channels_in", "hidden_channels")}
        return {"head": head, "training": values}


def _kill_after_steps() -> int | None:
    value = os.environ.get(KILL_AFTER_STEPS_ENV)
    return int(value) if value else None


INPUT_CHANNELS = ("logits_256", "pos_map", "neg_map")
IMAGE_INPUT_CHANNELS = ("image R", "image G", "image B")  # an image head's channels 3-5
# Settings that make a finite batch diverge (all validated finite by the config schema).
DIVERGENCE_SETTINGS = "training.lr, training.dice_lambda, training.logit_clip"


class NonFiniteLossError(LaplaceHeadError):
    """The training or validation loss is NaN or infinite; nothing of the epoch was saved."""


class _FirstNonFinite:
    """Tracks, on the device, the first step whose loss is not finite (no host sync per step).

    Per step it records - only if no earlier step was bad - the step, the loss, and which input
    channels and whether the target held non-finite values. :meth:`raise_if_found` syncs.
    """

    def __init__(self, device: torch.device, channels_in: int = len(INPUT_CHANNELS)) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)
        self.names = (*INPUT_CHANNELS, *IMAGE_INPUT_CHANNELS)[:channels_in]
        self.bad_inputs = torch.zeros(channels_in + 1, dtype=torch.bool, device=device)

    def update(
        self, step: int, loss: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor
    ) -> None:
        first = (self.step < 0) & ~torch.isfinite(loss.detach())
        self.step = torch.where(first, torch.full_like(self.step, step), self.step)
        self.loss = torch.where(first, loss.detach().float(), self.loss)
        channels = (~torch.isfinite(inputs)).transpose(0, 1).flatten(1).any(dim=1)
        bad = torch.cat([channels, (~torch.isfinite(target)).any().reshape(1)])
        self.bad_inputs = torch.where(first, bad, self.bad_inputs)

    def raise_if_found(self, epoch: int | None, n_steps: int | None, data_name: str) -> None:
        step = int(self.step.item())
        if step < 0:
            return
        where = f"epoch {epoch}, step {step + 1}" if epoch is not None else f"step {step + 1}"
        if n_steps:
            where += f" of {n_steps}"
        bad = [
            name
            for name, flag in zip((*self.names, "gt_mask_256"), self.bad_inputs.tolist())
            if flag
        ]
        if bad:
            cause = (
                f"the batch of that step holds NaN or infinite values in {', '.join(bad)} of "
                f"{data_name}: the packed training data is corrupt or was built with a "
                "non-finite setting (e.g. prompt_generation.gaussian_sigma). Rebuild it (re-run "
                "the precompute and training_data stages) or remove the bad rows"
            )
        else:
            cause = (
                "the inputs of that step are finite, so a setting made training diverge: lower "
                f"training.lr and check {DIVERGENCE_SETTINGS} (with amp, also try amp: false)"
            )
        raise NonFiniteLossError(
            f"training stopped: the loss is not finite ({self.loss.item()}) at {where}; {cause}. "
            "Nothing of this epoch was saved; after the fix, resume continues from the last "
            "completed epoch."
        )


def train_one_epoch(
    model: NoImageHead,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    dice_lambda: float,
    device: torch.device,
    amp: bool,
    desc: str = "train",
    step_counter: list[int] | None = None,
    epoch: int | None = None,
    data_name: str = "the training split",
) -> tuple[float, int]:
    """One pass over ``loader``; returns (mean train loss per sample, samples seen).

    ``loader`` yields (inputs (B, 3, H, W), target (B, 1, H, W)) float32 batches. ``amp``
    enables fp16 autocast (CUDA only). ``step_counter`` is a one-element list counting the
    optimiser steps of this process (used by the kill hook of the resume tests).

    Raises
    ------
    NonFiniteLossError
        A step's loss is NaN or infinite. The message names ``epoch``, the step, and the likely
        cause: the input channels of ``data_name`` that hold non-finite values, or else the
        settings that make training diverge. Checked on the device every step and read at the
        progress-bar sync points (every 20 steps) and at the end of the epoch, before anything
        of the epoch can be saved.
    """
    model.train()
    kill_after = _kill_after_steps()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    non_finite = _FirstNonFinite(device, model.channels_in)
    n_steps = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(loader, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
    for step, (inputs, target) in enumerate(bar):
        inputs = inputs.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(inputs)
        loss = bce_dice_loss(logits, target, dice_lambda)
        non_finite.update(step, loss, inputs, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach() * inputs.shape[0]
        seen += inputs.shape[0]
        if step % 20 == 0:  # .item() is a CPU-GPU sync point: not on every step
            bar.set_postfix(loss=f"{loss.item():.4f}")
            non_finite.raise_if_found(epoch, n_steps, data_name)
        if step_counter is not None:
            step_counter[0] += 1
            if kill_after is not None and step_counter[0] >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    non_finite.raise_if_found(epoch, n_steps, data_name)
    return loss_sum.item() / max(seen, 1), seen


@torch.no_grad()
def evaluate_epoch(
    model: NoImageHead, loader: Any, dice_lambda: float, device: torch.device, amp: bool
) -> dict[str, float]:
    """Validation loss, per-image mean IoU and Dice of the head, and the base segmenter's IoU.

    The base IoU thresholds input channel 0 (the base logits) at 0 on the same rows, so the
    two IoUs are directly comparable.
    """
    model.eval()
    head, base = SegmentationMeter(), SegmentationMeter()
    for inputs, target in loader:
        inputs = inputs.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(inputs)
        logits = logits.float()
        head.update(logits, target, bce_dice_loss(logits, target, dice_lambda).item())
        base.update(inputs[:, :1], target)
    return {"val_loss": head.loss, "val_iou": head.iou, "val_dice": head.dice, "base_iou": base.iou}


def _check_rows(dataset: H5SegmentationDataset, split: str) -> None:
    if len(dataset) == 0:
        raise LaplaceHeadError(
            f"the {split} split file {dataset.h5_path} has 0 rows, so the head cannot be "
            f"{'trained' if split == 'train' else 'validated'}. Add samples (or check why "
            f"precompute failed for all of them in sam_precompute/{split}/_shards/)."
        )


@dataclass
class _Run:
    """Everything one training run carries from epoch to epoch."""

    run_dir: Path
    run_id: str
    run_config: dict
    settings: TrainingSettings
    device: torch.device
    amp: bool
    model: NoImageHead
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch_state: dict
    tracker: Any = None
    step_counter: list[int] = field(default_factory=lambda: [0])

    @property
    def finished(self) -> bool:
        return (
            self.epoch_state["epoch"] >= self.settings.num_epochs
            or self.epoch_state["patience_counter"] >= self.settings.early_stop_patience
        )

    def restore(self, state: dict, data_fingerprint: dict, force: bool) -> None:
        """Load a saved training state (``checkpoint.load_training_state``) into this run."""
        epoch_state = dict(state["epoch_state"])
        if epoch_state.get("data") != data_fingerprint and not force:
            raise LaplaceHeadError(
                f"cannot resume run {self.run_id}: the training data changed since it started "
                f"(saved {epoch_state.get('data')}, now {data_fingerprint}). Use a new run_id, "
                "delete the run directory, or pass --force."
            )
        epoch_state["data"] = data_fingerprint
        settings = self.settings  # a forced resume adopts the new lr and weight decay
        ckpt.restore_training_state(
            state, self.model, self.optimizer, self.scaler, settings.lr, settings.weight_decay
        )
        self.epoch_state = epoch_state

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Best/patience bookkeeping, checkpoints (state saved last), log line, wandb."""
        state, settings = self.epoch_state, self.settings
        base_iou = metrics.pop("base_iou")
        improved = state["best_val_iou"] is None or metrics["val_iou"] > state["best_val_iou"]
        checkpoint = self._checkpoint(epoch, metrics)
        if improved:
            state.update(best_val_iou=metrics["val_iou"], best_epoch=epoch, patience_counter=0)
        else:
            state["patience_counter"] += 1
        lr = self.optimizer.param_groups[0]["lr"]
        state["epoch"] = epoch
        state["base_val_iou"] = base_iou
        state["stopped_early"] = state["patience_counter"] >= settings.early_stop_patience
        state["history"].append({"epoch": epoch, **metrics, "base_val_iou": base_iou, "lr": lr})
        state["rng_states"] = ckpt.capture_rng_states()
        # best.pt is part of the epoch's commit (staged, then promoted after epoch_state.json),
        # so a kill can never leave it ahead of or behind the recorded best epoch.
        ckpt.save_training_state(
            self.run_dir,
            checkpoint,
            self.optimizer,
            self.scaler,
            state,
            best_checkpoint=checkpoint if improved else None,
        )
        LOGGER.info(
            "epoch %d/%d: train loss %.4f | val loss %.4f IoU %.4f Dice %.4f | base IoU %.4f | "
            "best IoU %.4f (epoch %d) | lr %.2e | patience %d/%d",
            epoch, settings.num_epochs, metrics["train_loss"], metrics["val_loss"],
            metrics["val_iou"], metrics["val_dice"], base_iou, state["best_val_iou"],
            state["best_epoch"], lr, state["patience_counter"], settings.early_stop_patience,
        )  # fmt: skip
        self.tracker.log(
            {
                "epoch": epoch,
                "train/loss": metrics["train_loss"],
                "train/lr": lr,
                "train/patience": state["patience_counter"],
                "val/loss": metrics["val_loss"],
                "val/iou": metrics["val_iou"],
                "val/dice": metrics["val_dice"],
                "val/best_iou": state["best_val_iou"],
                "val/base_iou": base_iou,
            },
            step=epoch,
        )
        if improved:
            aliases = ["best", f"epoch-{epoch}"]
            name = f"head-run_{self.run_id}"
            self.tracker.log_artifact(self.run_dir / ckpt.BEST_FILE, name, "model", aliases)

    def _checkpoint(self, epoch: int, metrics: Mapping[str, float]) -> dict:
        return ckpt.model_checkpoint(self.model, epoch, metrics, self.run_id, self.run_config)

    def summary(self) -> dict:
        """``training_summary.json``: best metrics (from best.pt), base IoU, run facts."""
        state = self.epoch_state
        best = dict(ckpt.load_torch_file(self.run_dir / ckpt.BEST_FILE)["metrics"])
        base_iou = state["base_val_iou"]
        seconds = state["train_seconds"]
        summary = {
            "run_id": self.run_id,
            "best_epoch": state["best_epoch"],
            "best": best,
            "base_val_iou": base_iou,
            "head_minus_base_val_iou": best["val_iou"] - base_iou,
            "head_beats_base": best["val_iou"] > base_iou,
            "epochs_trained": state["epoch"],
            "num_epochs": self.settings.num_epochs,
            "stopped_early": state["stopped_early"],
            "device": str(self.device),
            "amp": self.amp,
            "throughput_samples_per_s": state["train_samples"] / seconds if seconds else None,
            "train_rows": state["data"]["train"]["n_rows"],
            "val_rows": state["data"]["val"]["n_rows"],
            "best_checkpoint": str(self.run_dir / ckpt.BEST_FILE),
            "wandb_run_id": state.get("wandb_run_id"),
            "history": state["history"],
        }
        LOGGER.info(
            "val IoU: head %.4f (best epoch %s) vs base segmenter %.4f on the same val prompt "
            "sets: the head %s the base segmenter",
            best["val_iou"], state["best_epoch"], base_iou,
            "beats" if summary["head_beats_base"] else "does NOT beat",
        )  # fmt: skip
        return summary


def train_head(
    train_h5: str | os.PathLike,
    val_h5: str | os.PathLike,
    run_dir: str | os.PathLike,
    settings: TrainingSettings,
    run_id: str,
    run_config: Mapping[str, Any] | None = None,
    resume: str = "never",
    force: bool = False,
    wandb_config: Mapping[str, Any] | None = None,
    project_root: str | os.PathLike | None = None,
) -> dict:
    """Train (or resume) one run and write its checkpoints and ``training_summary.json``.

    Parameters
    ----------
    train_h5, val_h5
        Packed split files (the layout's ``split_h5("train")``, ``split_h5("val")``).
    run_dir
        The run folder (the layout's ``run_dir``).
    settings
        Head and training hyper-parameters.
    run_id
        Name of the run (stored in checkpoints, names the wandb run and artifact).
    run_config
        The resolved config, stored as the run's ``config.yaml`` and in every checkpoint;
        defaults to ``settings.as_config()``.
    resume
        ``never``: start fresh (an existing run with completed epochs is an error unless
        ``force``); ``require``: continue from the saved state, failing loudly, naming the file,
        when one is missing; ``auto`` (Snakemake): continue if a completed epoch exists.
    force
        With ``never``: delete the existing run's checkpoints and start over. With ``require``
        or ``auto``: continue although the head/training config differs from the saved one.
    wandb_config, project_root
        The ``wandb`` config section and the folder wandb writes under; None disables tracking.

    Returns
    -------
    dict
        The training summary (also written to ``run_dir/training_summary.json``).

    Raises
    ------
    LaplaceHeadError
        Empty split, missing/unreadable resume file, changed config or data, no GPU for cuda.
    """
    run_dir = Path(run_dir)
    run_config = dict(run_config or settings.as_config())
    state = ckpt.prepare_run_dir(run_dir, resume, force, run_config)
    device = resolve_device(settings.device, "training.device")
    train_set, val_set = _open_splits(train_h5, val_h5, settings)
    run = _start_run(run_dir, run_id, run_config, settings, device, train_set, val_set)
    if state is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(run_dir / ckpt.CONFIG_FILE, run_config)
    else:
        run.restore(state, run.epoch_state["data"], force)
        if state["config_differences"]:
            LOGGER.warning("forced resume with a changed config: %s", state["config_differences"])
            atomic_write_yaml(run_dir / ckpt.CONFIG_FILE, run_config)
        LOGGER.info("resuming run %s after epoch %d", run_id, run.epoch_state["epoch"])

    run.tracker = init_tracker(
        wandb_config or {"enabled": False},
        project_root or run_dir,
        job_type="train_head",
        name=f"train_head/run_{run_id}",
        run_config=run_config,
        run_id=run.epoch_state.get("wandb_run_id"),
    )
    run.epoch_state["wandb_run_id"] = run.tracker.run_id or run.epoch_state["wandb_run_id"]
    run.tracker.watch(run.model)
    try:
        _fit(run, train_set, val_set)
    finally:
        train_set.close()
        val_set.close()
    summary = run.summary()
    atomic_write_json(run_dir / ckpt.SUMMARY_FILE, summary)
    run.tracker.summary({f"best/{key}": value for key, value in summary["best"].items()})
    run.tracker.finish()
    return summary


def _open_splits(
    train_h5: str | os.PathLike, val_h5: str | os.PathLike, settings: TrainingSettings
) -> tuple[H5SegmentationDataset, H5SegmentationDataset]:
    """The train and val datasets, each refused when it has no rows."""
    train_set = H5SegmentationDataset(train_h5, settings.logit_clip, settings.in_memory)
    val_set = H5SegmentationDataset(val_h5, settings.logit_clip, settings.in_memory)
    _check_rows(train_set, "train")
    _check_rows(val_set, "val")
    for name, dataset in (("train", train_set), ("val", val_set)):
        if dataset.head.channels_in != settings.channels_in:
            raise LaplaceHeadError(
                f"the {name} split {dataset.h5_path} holds the {dataset.head.value} head's "
                f"inputs ({dataset.head.channels_in} channels), but the head being trained "
                f"takes {settings.channels_in}; train each head on its own split "
                "(ProjectLayout.for_head(head).split_h5)."
            )
    return train_set, val_set


def _start_run(
    run_dir: Path,
    run_id: str,
    run_config: dict,
    settings: TrainingSettings,
    device: torch.device,
    train_set: H5SegmentationDataset,
    val_set: H5SegmentationDataset,
) -> _Run:
    """A fresh run: the seeded initial head on ``device``, its optimizer and scaler, the epoch
    state of epoch 0 with the fingerprint of both splits."""
    amp = settings.amp and device.type == "cuda"
    if settings.amp and not amp:
        LOGGER.info("training.amp is ignored on CPU: AMP is CUDA-only (see the README)")
    data_fingerprint = {"train": train_set.fingerprint, "val": val_set.fingerprint}
    torch.manual_seed(derive_seed(settings.seed, "init"))
    model = NoImageHead(settings.channels_in, settings.hidden_channels).to(device)
    return _Run(
        run_dir=run_dir,
        run_id=run_id,
        run_config=run_config,
        settings=settings,
        device=device,
        amp=amp,
        model=model,
        optimizer=torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        ),
        scaler=torch.amp.GradScaler(device.type, enabled=amp),
        epoch_state=ckpt.new_epoch_state(run_id, data_fingerprint),
    )


def _fit(run: _Run, train_set: H5SegmentationDataset, val_set: H5SegmentationDataset) -> None:
    """Epochs from the one after ``run.epoch_state["epoch"]`` until the cap or early stop."""
    settings = run.settings
    pin = run.device.type == "cuda"
    train_loader, train_sampler = make_loader(
        train_set, settings.batch_size, True, settings.seed, settings.num_workers, pin
    )
    val_loader, _ = make_loader(
        val_set, settings.batch_size, False, settings.seed, settings.num_workers, pin
    )
    while not run.finished:
        epoch = run.epoch_state["epoch"] + 1
        train_sampler.set_epoch(epoch)
        started = time.perf_counter()
        train_loss, seen = train_one_epoch(
            run.model,
            train_loader,
            run.optimizer,
            run.scaler,
            settings.dice_lambda,
            run.device,
            run.amp,
            desc=f"epoch {epoch}/{settings.num_epochs}",
            step_counter=run.step_counter,
            epoch=epoch,
            data_name=str(train_set.h5_path),
        )
        run.epoch_state["train_seconds"] += time.perf_counter() - started
        run.epoch_state["train_samples"] += seen
        metrics = evaluate_epoch(run.model, val_loader, settings.dice_lambda, run.device, run.amp)
        _check_validation_finite(epoch, metrics, val_set)
        run.end_epoch(epoch, {"train_loss": train_loss, **metrics})


def _check_validation_finite(
    epoch: int, metrics: Mapping[str, float], val_set: H5SegmentationDataset
) -> None:
    """Refuse to commit an epoch whose validation metrics are NaN or infinite."""
    bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
    if bad:
        raise NonFiniteLossError(
            f"training stopped at epoch {epoch}: the validation metrics "
            f"{', '.join(f'{k} = {v}' for k, v in sorted(bad.items()))} are not finite. The "
            f"training loss was finite, so the validation split {val_set.h5_path} most likely "
            "holds NaN or infinite values (logits_256, pos_map or neg_map): rebuild it (re-run "
            "the precompute and training_data stages). Nothing of this epoch was saved."
        )
