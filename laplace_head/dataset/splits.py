"""Stratified train/val/test split (80/10/10 by default) that is frozen after the first run.

The val and test shares are :class:`SplitFractions` (``data.split_fractions``). Per class with
``n`` valid samples the target sizes are:

* ``n >= 10``: ``n_val = max(1, round(val n))`` and ``n_test = max(1, round(test n))`` (half
  rounds up), the rest train;
* ``3 <= n < 10``: one val, one test, the rest train (tiny classes are still represented);
* ``n == 2``: one train, one val;  ``n == 1``: train.

Within a class, samples (sorted by id) are shuffled with a seed derived from ``split_seed`` and
the class name, then test, val and train are filled in that order.

Freezing: samples that already have a split keep it. Newly found valid samples of a class are
shuffled the same way and fill each split's shortfall against the target for the new class size
(test, then val, then train); the rest go to train. Samples that became invalid or disappeared
are dropped and reported.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np

from laplace_head.layout import SPLITS
from laplace_head.util.seeding import derive_seed

#: The largest val or test share: train keeps at least a fifth of every class of >= 10 samples.
MAX_FRACTION = 0.4


@cache
def _schema_fractions() -> tuple[float, float]:
    from laplace_head.config.loader import fill_defaults, load_schema

    val, test = fill_defaults({}, load_schema())["data"]["split_fractions"]
    return float(val), float(test)


@dataclass(frozen=True)
class SplitFractions:
    """The val and test shares of a class (``data.split_fractions``); train gets the rest.

    A config writes it ``[val, test]``: ``SplitFractions(*config["data"]["split_fractions"])``;
    :meth:`default` is the schema's default (0.1 and 0.1).
    """

    val: float
    test: float

    def __post_init__(self) -> None:
        for name in ("val", "test"):
            value = getattr(self, name)
            if isinstance(value, bool) or not 0 < value <= MAX_FRACTION:
                raise ValueError(
                    f"split fraction {name} = {value!r} must be > 0 and <= {MAX_FRACTION} "
                    "(data.split_fractions)"
                )

    @classmethod
    def default(cls) -> SplitFractions:
        """The schema's default of ``data.split_fractions``."""
        return cls(*_schema_fractions())

    def matches(self, other: SplitFractions) -> bool:
        """True when both shares agree to float rounding (values read back from a CSV)."""
        return math.isclose(self.val, other.val) and math.isclose(self.test, other.test)

    def describe(self) -> str:
        """The shares as a config writes them, ``[0.1, 0.1]`` ([val, test])."""
        return f"[{self.val:g}, {self.test:g}]"


def target_sizes(n: int, fractions: SplitFractions | None = None) -> dict[str, int]:
    """Target number of samples per split for a class of ``n`` samples (module docstring);
    ``fractions`` default to :meth:`SplitFractions.default`."""
    fractions = SplitFractions.default() if fractions is None else fractions
    if n >= 10:
        n_val = max(1, math.floor(fractions.val * n + 0.5))
        n_test = max(1, math.floor(fractions.test * n + 0.5))
    elif n >= 3:
        n_val = n_test = 1
    elif n == 2:
        n_val, n_test = 1, 0
    else:
        n_val = n_test = 0
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def _shuffled(sample_ids: Iterable[str], split_seed: int, class_name: str) -> list[str]:
    ordered = sorted(sample_ids)
    rng = np.random.default_rng(derive_seed(split_seed, "split", class_name))
    return [ordered[i] for i in rng.permutation(len(ordered))]


def assign_splits(
    samples_by_class: Mapping[str, Iterable[str]],
    split_seed: int,
    frozen: Mapping[str, str] | None = None,
    fractions: SplitFractions | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Assign every valid sample to exactly one split.

    Parameters
    ----------
    samples_by_class
        Valid sample ids grouped by class.
    split_seed
        Seed of the per-class shuffles.
    frozen
        Existing ``sample_id -> split`` assignment (from a previous run); kept as is.
    fractions
        The val and test shares (default :meth:`SplitFractions.default`). Only new samples
        follow them: a frozen assignment is kept whatever fractions made it (stage 1 refuses
        a change, :func:`laplace_head.dataset.manifests.build_manifests`).

    Returns
    -------
    assignment, dropped
        ``sample_id -> split`` for every valid sample, and the previously assigned sample ids
        that are no longer valid (sorted).
    """
    frozen = dict(frozen or {})
    assignment: dict[str, str] = {}
    valid_ids: set[str] = set()
    for class_name, ids in sorted(samples_by_class.items()):
        ids = sorted(set(ids))
        valid_ids.update(ids)
        kept = {sid: frozen[sid] for sid in ids if frozen.get(sid) in SPLITS}
        assignment.update(kept)
        new_ids = _shuffled([sid for sid in ids if sid not in kept], split_seed, class_name)
        targets = target_sizes(len(ids), fractions)
        counts = {split: sum(1 for s in kept.values() if s == split) for split in SPLITS}
        position = 0
        for split in ("test", "val"):
            shortfall = max(targets[split] - counts[split], 0)
            for sid in new_ids[position : position + shortfall]:
                assignment[sid] = split
            position += min(shortfall, len(new_ids) - position)
        for sid in new_ids[position:]:
            assignment[sid] = "train"
    dropped = sorted(sid for sid in frozen if sid not in valid_ids)
    return assignment, dropped
