"""Is data loading the bottleneck of training? Throughput of the real loop vs the compute floor.

Runs :func:`laplace_head.training.loop.train_one_epoch` (the loop ``train_head`` uses: forward,
BCE + Dice, backward, AdamW step) with the same model and batch size over

- ``floor``: batches already in memory as float32 tensors (no loading at all: the compute floor),
- ``hdf5 lazy wN``: the real DataLoader over the split HDF5 read from disk
  (``in_memory="never"``), N worker processes,
- ``hdf5 in-RAM w0``: the real DataLoader with the split loaded into RAM (``in_memory="always"``),

and prints samples/s and the ratio to the floor (target >= 0.85), plus the samples/s of the
same batches iterated without any compute (how much headroom loading has) and the ratio that
serial loading + compute implies, ``1 / (1 + floor / load_only)``, which other load on the
machine cannot blur. Each mode runs one warm-up epoch, then ``--epochs`` timed epochs; the
modes are interleaved ``--repeats`` times and the median is reported. The data is a synthetic
split in the exact packed layout (``tests/helpers/synthetic_h5.py``) unless ``--h5`` names a real
packed file.

    .venv/bin/python bench/bench_training.py [--rows 64] [--batch-size 8] [--workers 0 2]
        [--device auto] [--h5 PATH]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers.synthetic_h5 import make_synthetic_h5  # noqa: E402

from laplace_head.model.head import NoImageHead  # noqa: E402
from laplace_head.training.dataset import H5SegmentationDataset, make_loader  # noqa: E402
from laplace_head.training.loop import train_one_epoch  # noqa: E402
from laplace_head.util.devices import resolve_device  # noqa: E402

TARGET_RATIO = 0.85


def _throughput(batches_factory, n_rows: int, epochs: int, device: torch.device, amp: bool):
    """Samples/s of ``epochs`` timed epochs after one warm-up epoch (fresh model each time)."""
    torch.manual_seed(0)
    model = NoImageHead().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    batches = batches_factory()
    train_one_epoch(model, batches, optimizer, scaler, 0.5, device, amp, desc="warm-up")
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        train_one_epoch(model, batches, optimizer, scaler, 0.5, device, amp, desc="timed")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n_rows * epochs / (time.perf_counter() - started)


def _load_only(batches_factory, n_rows: int, epochs: int) -> float:
    """Samples/s of iterating the batches with no compute at all (the loading ceiling)."""
    batches = batches_factory()
    for _ in batches:  # warm-up (starts workers, fills the page cache)
        pass
    started = time.perf_counter()
    for _ in range(epochs):
        for _ in batches:
            pass
    return n_rows * epochs / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows of the synthetic split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--h5", type=Path, help="a real packed split file instead of synthetic")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    amp = device.type == "cuda"
    pin = device.type == "cuda"

    with tempfile.TemporaryDirectory() as tmp:
        h5_path = args.h5 or make_synthetic_h5(Path(tmp) / "train.h5", args.rows, seed=0)
        lazy = H5SegmentationDataset(h5_path, 20.0, in_memory="never")
        ram = H5SegmentationDataset(h5_path, 20.0, in_memory="always")
        n_rows = len(lazy)
        resident = [
            ram.get_batch(range(start, min(start + args.batch_size, n_rows)))
            for start in range(0, n_rows, args.batch_size)
        ]
        if device.type == "cuda":
            resident = [(x.to(device), y.to(device)) for x, y in resident]

        def loader(dataset, workers):
            def factory():
                return make_loader(dataset, args.batch_size, True, 0, workers, pin)[0]

            return factory

        modes = {"floor (tensors in memory)": lambda: resident}
        for workers in args.workers:
            modes[f"hdf5 lazy w{workers}"] = loader(lazy, workers)
        modes["hdf5 in-RAM w0"] = loader(ram, 0)
        results: dict[str, list[float]] = {name: [] for name in modes}
        loading: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, factory in modes.items():
                results[name].append(_throughput(factory, n_rows, args.epochs, device, amp))
                loading[name].append(_load_only(factory, n_rows, args.epochs))

    floor = statistics.median(results["floor (tensors in memory)"])
    print(
        f"\ndevice {device} ({torch.get_num_threads()} threads), amp {amp}, {n_rows} rows, "
        f"batch {args.batch_size}, {args.epochs} timed epochs x {args.repeats} repeats (median)"
    )
    print(
        f"{'mode':28s} {'samples/s':>10s} {'ratio':>7s} {'load-only samples/s':>20s} "
        f"{'serial bound':>13s}"
    )
    for name, values in results.items():
        median = statistics.median(values)
        load = statistics.median(loading[name])
        # With loading and compute in series (w0), throughput = 1 / (1/floor + 1/load): a
        # ratio that other processes' load on the machine cannot blur.
        bound = 1.0 / (1.0 + floor / load)
        print(f"{name:28s} {median:10.1f} {median / floor:7.2f} {load:20.1f} {bound:13.3f}")
    best = max(statistics.median(v) for k, v in results.items() if k.startswith("hdf5"))
    verdict = "OK" if best / floor >= TARGET_RATIO else "BELOW TARGET"
    print(f"best HDF5 mode / floor = {best / floor:.2f} (target >= {TARGET_RATIO}): {verdict}")


if __name__ == "__main__":
    main()
