"""Per-stage settings taken from the resolved config, and the facts every stage shares.

Each rule passes its stage's settings in ``params:``, built here by :func:`stage_params` from
the config; the stand-alone commands build the same dicts from a config file. So a script never
reads the config, and the params a job ran with are also its rerun triggers.

Two kinds of settings:

* **Result settings** change what a stage computes. They travel as plain dicts, which
  Snakemake records and compares: changing one re-runs the stage (and its downstream jobs).
* **Runtime settings** (:class:`Runtime`: devices, worker counts, in-RAM loading, the split
  HDF5's chunking and compression, wandb, the run id) do not change a result on a given
  device. They travel as a :class:`Runtime` object; Snakemake records only params it can
  represent (plain values and containers), so these are not rerun triggers.
  :data:`RUNTIME_KEYS` is the one list of them.

The segmenter fingerprint (:func:`segmenter_fingerprint`) names what made a head's inputs (the
base segmenter's result settings and the prompt sigma): stage 4.5 records it in each split,
stage 6 in the posterior, and the interactive predictor checks it
(:func:`check_segmenter_fingerprint`).
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from laplace_head.bayes.variant import PosteriorVariant
from laplace_head.errors import LaplaceHeadError
from laplace_head.layout import SPLITS
from laplace_head.model.head_variant import HeadVariant

# The working grid: base logits, prompt maps, ground truth and head outputs are all
# GRID_SIZE x GRID_SIZE (the "256" in logits_256).
GRID_SIZE = 256

# Config keys that never change a stage's result (section -> keys; "*" = the whole section).
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("h5_chunk_rows", "h5_compression"),
    "sam": ("device",),
    "training": ("run_id", "num_workers", "device", "in_memory"),
    "wandb": ("*",),
}
# Per base segmenter, the ``sam`` keys its outputs depend on (the other backend's keys are not).
SEGMENTER_KEYS: dict[str, tuple[str, ...]] = {
    "sam": ("backend", "checkpoint", "model_type"),
    "random_walker": ("backend", "random_walker_max_side", "random_walker_beta"),
}


class Backend(str, Enum):
    """The base segmenters (``sam.backend``)."""

    SAM = "sam"
    RANDOM_WALKER = "random_walker"


def result_keys(config: Mapping[str, Any], section: str) -> dict:
    """The keys of a config section that change a result (:data:`RUNTIME_KEYS` left out)."""
    return {
        key: value for key, value in config[section].items() if not is_runtime_key(section, key)
    }


def is_runtime_key(section: str, key: str) -> bool:
    """True for ``section.key`` listed in :data:`RUNTIME_KEYS`."""
    runtime = RUNTIME_KEYS.get(section, ())
    return "*" in runtime or key in runtime


@dataclass(frozen=True)
class Runtime:
    """Machine and bookkeeping settings: never a rerun trigger (see the module docstring)."""

    project_root: str = "."
    sam_device: str = "auto"
    training_device: str = "auto"
    num_workers: int = 0
    in_memory: str = "auto"
    h5_chunk_rows: int | None = None
    h5_compression: str = "none"
    wandb: dict = field(default_factory=lambda: {"enabled": False})

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Runtime:
        training, data = config["training"], config["data"]
        return cls(
            project_root=str(data["project_root"]),
            sam_device=config["sam"]["device"],
            training_device=training["device"],
            num_workers=training["num_workers"],
            in_memory=training["in_memory"],
            h5_chunk_rows=data["h5_chunk_rows"],
            h5_compression=data["h5_compression"],
            wandb=dict(config["wandb"]),
        )


def segmenter_params(config: Mapping[str, Any]) -> dict:
    """The ``sam`` keys the configured backend's outputs depend on."""
    sam = config["sam"]
    return {key: sam[key] for key in SEGMENTER_KEYS[Backend(sam["backend"]).value]}


#: Where each key of :func:`segmenter_fingerprint` comes from in the config.
FINGERPRINT_SOURCES: dict[str, str] = {
    **{key: f"sam.{key}" for keys in SEGMENTER_KEYS.values() for key in keys},
    "checkpoint_bytes": "sam.checkpoint's size in bytes",
    "checkpoint_head_tail_md5": "sam.checkpoint's first and last MiB",
    "prompt_sigma": "prompt_generation.gaussian_sigma",
}


class SegmenterMismatchError(LaplaceHeadError, ValueError):
    """A base segmenter or prompt sigma other than the one whose outputs a head was trained on."""


class SegmenterMismatchWarning(UserWarning):
    """A segmenter fingerprint that differs (allowed by the caller) or cannot be checked."""


def segmenter_fingerprint(segmenter: Mapping[str, Any], prompt_sigma: float) -> dict[str, Any]:
    """What shaped a head's inputs: the base segmenter's result settings and the prompt maps'
    width, as a small JSON-able dict.

    Parameters
    ----------
    segmenter
        The ``sam`` keys of the backend (:func:`segmenter_params`; other keys are ignored).
    prompt_sigma
        ``prompt_generation.gaussian_sigma``, the prompt maps' Gaussian std in grid pixels.

    Returns
    -------
    dict
        ``backend`` and the backend's :data:`SEGMENTER_KEYS` values, then ``prompt_sigma``.
        For ``sam`` the checkpoint's path is replaced by what identifies its content without
        reading 2.5 GB: ``checkpoint_bytes`` (its size) and ``checkpoint_head_tail_md5`` (the
        MD5 of its first and last MiB), so a moved checkpoint matches and a swapped one does not.

    Raises
    ------
    ValueError
        An unknown backend, or a key of the backend missing from ``segmenter``.
    LaplaceHeadError
        The SAM checkpoint cannot be read.
    """
    try:
        backend = Backend(segmenter.get("backend")).value
    except ValueError:
        valid = ", ".join(b.value for b in Backend)
        raise ValueError(
            f"sam.backend = {segmenter.get('backend')!r} is not one of {valid}"
        ) from None
    missing = [key for key in SEGMENTER_KEYS[backend] if key not in segmenter]
    if missing:
        raise ValueError(
            f"the {backend} segmenter settings lack {', '.join(missing)}; give every key of "
            f"SEGMENTER_KEYS[{backend!r}] (laplace_head.settings.segmenter_params(config))"
        )
    fingerprint = {key: segmenter[key] for key in SEGMENTER_KEYS[backend] if key != "checkpoint"}
    if backend == Backend.SAM.value:
        fingerprint.update(_checkpoint_identity(segmenter["checkpoint"]))
    if isinstance(prompt_sigma, bool) or not isinstance(prompt_sigma, numbers.Real):
        raise ValueError(f"prompt_sigma must be a number; got {prompt_sigma!r}")
    fingerprint["prompt_sigma"] = float(prompt_sigma)
    return fingerprint


def _checkpoint_identity(checkpoint: Any) -> dict[str, Any]:
    from laplace_head.util.atomic import file_head_tail_md5

    try:
        return {
            "checkpoint_bytes": os.stat(checkpoint).st_size,
            "checkpoint_head_tail_md5": file_head_tail_md5(checkpoint),
        }
    except (OSError, TypeError) as exc:
        raise LaplaceHeadError(
            f"SAM checkpoint {str(checkpoint)!r} (sam.checkpoint) cannot be read ({exc}); set "
            "sam.checkpoint to the checkpoint file the head's inputs were made with."
        ) from exc


def segmenter_fingerprint_differences(
    recorded: Mapping[str, Any], given: Mapping[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded value, given value)}`` for every key where two fingerprints differ
    (a key one of them lacks has the value None there)."""
    keys = [*recorded, *(key for key in given if key not in recorded)]
    return {
        key: (recorded.get(key), given.get(key))
        for key in keys
        if recorded.get(key) != given.get(key)
    }


def check_segmenter_fingerprint(
    recorded: Mapping[str, Any] | None,
    given: Mapping[str, Any],
    source: str,
    allow_mismatch: bool = False,
) -> None:
    """Refuse a segmenter fingerprint that differs from the one ``source`` recorded.

    Parameters
    ----------
    recorded
        The fingerprint the head's training inputs were made with (None: not recorded, which
        warns and returns, as the settings cannot be checked).
    given
        The fingerprint of the segmenter settings and prompt sigma about to be used.
    source
        What recorded it, for the messages (e.g. a posterior's folder).
    allow_mismatch
        Warn instead of raising.

    Raises
    ------
    SegmenterMismatchError
        Naming each differing key (recorded vs given) and the fix.
    """
    if recorded is None:
        warnings.warn(
            f"{source} records no segmenter fingerprint (its split files were packed without "
            "one), so the base segmenter and prompt sigma given cannot be checked against the "
            "head's training inputs; re-run pack_hdf5 and fit_laplace to record it.",
            SegmenterMismatchWarning,
            stacklevel=3,
        )
        return
    if not isinstance(recorded, Mapping):
        recorded = {"recorded fingerprint": recorded}
    differences = segmenter_fingerprint_differences(recorded, given)
    if not differences:
        return
    listed = "; ".join(
        f"{key} ({FINGERPRINT_SOURCES.get(key, key)}): recorded {old!r}, given {new!r}"
        for key, (old, new) in differences.items()
    )
    message = (
        f"{source} was fitted on the outputs of another base segmenter or prompt sigma than "
        f"the one given ({listed}), so the head would see inputs it never saw in training."
    )
    if allow_mismatch:
        warnings.warn(
            f"{message} Proceeding: allow_segmenter_mismatch=True.",
            SegmenterMismatchWarning,
            stacklevel=3,
        )
        return
    raise SegmenterMismatchError(
        f"{message} Use the sam settings and prompt_generation.gaussian_sigma of the training "
        "run, or pass allow_segmenter_mismatch=True to proceed with a warning."
    )


#: The ``active_prompting`` keys the click rules read (``PolicySettings`` of
#: :mod:`laplace_head.interactive.clicks`, which imports this module, so they are listed here).
POLICY_SETTING_KEYS = ("region_error_level", "lookahead_candidates", "coverage_radius")
#: Of those, the integer ones (the rest are numbers).
INTEGER_POLICY_SETTINGS = ("lookahead_candidates",)
#: Separates a click rule from setting overrides in a policy entry of stage 8 or the ablation:
#: ``bald_region@region_error_level=0.15`` is bald_region with that level, so a sweep of a
#: rule's constant is a list of such entries (:func:`parse_policy`).
POLICY_SETTINGS_MARK = "@"


def parse_policy(entry: str) -> tuple[str, dict[str, float | int]]:
    """A policy entry -> (the click rule's name, its setting overrides).

    ``"bald_region"`` -> ``("bald_region", {})``; ``"bald_lookahead@lookahead_candidates=5,
    region_error_level=0.2"`` -> ``("bald_lookahead", {"lookahead_candidates": 5,
    "region_error_level": 0.2})``. The keys are :data:`POLICY_SETTING_KEYS`; the values'
    ranges are the config schema's (checked by the config loader and by ``PolicySettings``).
    The name is not looked up here (the click-rule registry does that).

    Raises
    ------
    ValueError
        Naming the entry, for a key that is no policy setting, a key given twice, or a value
        that is no number (no integer for :data:`INTEGER_POLICY_SETTINGS`).
    """
    if not isinstance(entry, str):
        raise ValueError(f"a click policy is a name (str); got {entry!r}")
    name, mark, rest = entry.partition(POLICY_SETTINGS_MARK)
    overrides: dict[str, float | int] = {}
    if not mark:
        return name, overrides
    for item in rest.split(","):
        key, equals, text = (part.strip() for part in item.partition("="))
        if key not in POLICY_SETTING_KEYS or not equals:
            raise ValueError(
                f"click policy {entry!r}: {item!r} is not KEY=VALUE with KEY one of "
                f"{', '.join(POLICY_SETTING_KEYS)} (e.g. "
                f"bald_region{POLICY_SETTINGS_MARK}region_error_level=0.15)"
            )
        if key in overrides:
            raise ValueError(f"click policy {entry!r}: {key} is given twice")
        try:
            value: float | int = int(text) if key in INTEGER_POLICY_SETTINGS else float(text)
            if not math.isfinite(value):
                raise ValueError
        except ValueError:
            kind = "an integer" if key in INTEGER_POLICY_SETTINGS else "a finite number"
            raise ValueError(f"click policy {entry!r}: {key} = {text!r} is not {kind}") from None
        overrides[key] = value
    return name, overrides


#: laplace.fixed_temperature's named value: the pixels each training row adds to the curvature.
PIXELS_PER_IMAGE = "pixels_per_image"


def posterior_variant_problem(laplace: Mapping[str, Any]) -> str | None:
    """Why a laplace section (or a variant's merged one) is not a valid posterior, else None."""
    try:
        PosteriorVariant(laplace["target_layer"], laplace["approx"])
    except ValueError as exc:
        return str(exc)
    fixed = laplace["fixed_temperature"]
    if fixed != PIXELS_PER_IMAGE and (isinstance(fixed, str | bool) or not fixed > 0):
        return f"fixed_temperature = {fixed!r} must be {PIXELS_PER_IMAGE!r} or a number > 0"
    return None


class UnknownVariantError(LaplaceHeadError, KeyError):
    """A posterior variant name that ``ablation.variants`` does not declare."""

    def __str__(self) -> str:
        return str(self.args[0])


def ablation_variants(config: Mapping[str, Any]) -> list[str]:
    """The variants `snakemake ablation` runs: ``ablation.run``, or every declared one."""
    ablation = config["ablation"]
    return list(ablation["variants"] if ablation.get("run") is None else ablation["run"])


def variant_laplace(config: Mapping[str, Any], variant: str) -> dict[str, Any]:
    """The laplace section of ablation variant ``variant``: the config's, with its overrides."""
    variants = config["ablation"]["variants"]
    if variant not in variants:
        raise UnknownVariantError(
            f"unknown ablation variant {variant!r}; config ablation.variants has: "
            f"{', '.join(variants) or '(none)'}"
        )
    return {**config["laplace"], **variants[variant]}


def config_heads(config: Mapping[str, Any]) -> list[str]:
    """The head variants the workflow builds (``heads``), in their configured order."""
    return [HeadVariant.parse(head, "heads entry").value for head in config["heads"]]


def head_params(config: Mapping[str, Any], head: str | None = None) -> dict[str, int]:
    """The constructor arguments of head variant ``head`` (default ``head.variant``): its
    ``channels_in`` (:class:`~laplace_head.model.head_variant.HeadVariant`) and
    ``head.hidden_channels``; the seed head's are the seed's ``head`` section, key for key."""
    variant = HeadVariant.parse(config["head"]["variant"] if head is None else head, "head")
    return {
        "channels_in": variant.channels_in,
        "hidden_channels": config["head"]["hidden_channels"],
    }


def stage8_policies(policies: Sequence[str], suggest_policy: str) -> list[str]:
    """Stage 8's click rules: the configured ``policies`` in their order, then
    ``suggest_policy`` (the shipped rule) when they do not list it."""
    policies = list(policies)
    return policies if suggest_policy in policies else [*policies, suggest_policy]


def stage_params(
    config: Mapping[str, Any], variant: str | None = None, head: str | None = None
) -> dict[str, dict]:
    """Result settings of every stage, by rule name, from a resolved config.

    With ``variant`` (a name of ``ablation.variants``) stage 6 fits that variant's posterior
    and stage 8 clicks with the ablation's policies and click budget. Stage 8's policies always
    include ``active_prompting.suggest_policy`` (:func:`stage8_policies`). ``head`` (default
    ``head.variant``) is the head variant stage 5 trains (:func:`head_params`).
    """
    data, prompts, laplace = config["data"], config["prompt_generation"], config["laplace"]
    active = dict(config["active_prompting"])
    policy_settings = {key: active[key] for key in POLICY_SETTING_KEYS}
    fit = laplace if variant is None else variant_laplace(config, variant)
    if variant is not None:
        ablation = config["ablation"]
        active.update(policies=ablation["policies"], max_clicks=ablation["max_clicks"])
    return {
        "build_manifests": {
            "images_root": data["images_root"],
            "masks_root": data["masks_root"],
            "split_seed": data["split_seed"],
            "split_fractions": list(data["split_fractions"]),
        },
        "generate_promptsets": {
            "shard_size": data["shard_size"],
            "num_promptsets": {split: prompts[f"num_promptsets_{split}"] for split in SPLITS},
            "min_pairs": prompts["min_pairs"],
            "max_pairs": prompts["max_pairs"],
            "prompt_seed": prompts["prompt_seed"],
            "first_click_promptsets": prompts["first_click_promptsets"],
        },
        "precompute_sam": {
            "shard_size": data["shard_size"],
            "sigma": prompts["gaussian_sigma"],
            "segmenter": segmenter_params(config),
        },
        "build_training_index": {"shard_size": data["shard_size"]},
        "pack_hdf5": {
            "segmenter": segmenter_params(config),
            "prompt_sigma": prompts["gaussian_sigma"],
        },
        "train_head": {
            "head": head_params(config, head),
            "training": result_keys(config, "training"),
        },
        "fit_laplace": {
            # max_pixels_calibration is stage 7's (the temperature-scaling baseline), not the fit's
            "laplace": {k: v for k, v in fit.items() if k != "max_pixels_calibration"},
            "logit_clip": config["training"]["logit_clip"],
        },
        "evaluate": {
            "n_posterior_samples": laplace["n_posterior_samples"],
            "ece_bins": laplace["ece_bins"],
            "prompt_sigma": prompts["gaussian_sigma"],
            "max_pixels_calibration": laplace["max_pixels_calibration"],
            "seed": laplace["seed"],
            "n_bootstrap": config["active_prompting"]["n_bootstrap"],
            # the example panels' suggestions follow the shipped rule's settings
            "policy_settings": dict(policy_settings),
        },
        "visualize_sanity": dict(config["sanity_panels"]),
        "ablation": {
            "heads": config_heads(config),
            "variants": ablation_variants(config),
            "splits": list(config["ablation"]["splits"]),
            "policies": stage8_policies(
                config["ablation"]["policies"], config["active_prompting"]["suggest_policy"]
            ),
            "max_clicks": config["ablation"]["max_clicks"],
            "n_bootstrap": active["n_bootstrap"],
            "seed": active["seed"],
        },
        "active_prompting": {
            "split": active["split"],
            "shard_size": data["shard_size"],
            "policies": stage8_policies(active["policies"], active["suggest_policy"]),
            "suggest_policy": active["suggest_policy"],
            "policy_settings": policy_settings,
            "max_clicks": active["max_clicks"],
            "seed": active["seed"],
            "n_bootstrap": active["n_bootstrap"],
            "segmenter": segmenter_params(config),
            "prompt_sigma": prompts["gaussian_sigma"],
            "sam_mask_input": active["sam_mask_input"],
        },
    }


def split_settings(settings: Mapping[str, Any], split: str) -> dict:
    """``stage_params(config)["generate_promptsets"]`` for one split: ``num_promptsets`` is
    that split's count, so a change to another split's count re-runs none of its jobs."""
    return {**settings, "num_promptsets": settings["num_promptsets"][split]}


@dataclass(frozen=True)
class LaplaceSettings:
    """Stage 6: the ``laplace`` section plus the head's input clip (see schema.yaml).

    The schema holds the defaults: build from a resolved config with :meth:`from_params`, or
    with :meth:`from_defaults` and overrides. ``batch_rows`` is how many split rows are
    streamed at a time (memory, not a result).
    """

    prior_precision_grid: tuple[float, ...]
    temperature_grid: tuple[float, ...]
    logit_clip: float
    max_pixels_fit: int | None
    seed: int
    target_layer: str
    approx: str
    tuning: str
    fixed_temperature: float | str
    max_pixels_tune: int | None
    output_temperature: bool = False
    batch_rows: int = 4

    @property
    def variant(self) -> PosteriorVariant:
        """The posterior variant (raises ``ValueError`` for an invalid pair)."""
        return PosteriorVariant(self.target_layer, self.approx)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LaplaceSettings:
        """From ``stage_params(config)["fit_laplace"]``."""
        laplace = params["laplace"]
        return cls(
            prior_precision_grid=tuple(laplace["prior_precision_grid"]),
            temperature_grid=tuple(laplace["temperature_grid"]),
            logit_clip=params["logit_clip"],
            max_pixels_fit=laplace["max_pixels_fit"],
            seed=laplace["seed"],
            target_layer=laplace["target_layer"],
            approx=laplace["approx"],
            tuning=laplace["tuning"],
            fixed_temperature=laplace["fixed_temperature"],
            max_pixels_tune=laplace["max_pixels_tune"],
            output_temperature=laplace["output_temperature"],
        )

    @classmethod
    def from_defaults(cls, **overrides: Any) -> LaplaceSettings:
        """The schema's defaults (``laplace`` and ``training.logit_clip``) with ``overrides``
        of any field."""
        from laplace_head.config.loader import fill_defaults, load_schema

        defaults = fill_defaults({}, load_schema())
        params = {"laplace": defaults["laplace"], "logit_clip": defaults["training"]["logit_clip"]}
        return replace(cls.from_params(params), **overrides)


@dataclass(frozen=True)
class EvaluationSettings:
    """Stage 7 (``stage_params(config)["evaluate"]``, plus how much to show and stream)."""

    n_posterior_samples: int = 32
    ece_bins: int = 15
    prompt_sigma: float = 8.0
    max_pixels_calibration: int | None = 4_000_000
    seed: int = 0
    n_bootstrap: int = 2000  # active_prompting.n_bootstrap: the paired per-image IoU comparison
    # the active_prompting keys of the click rules (POLICY_SETTING_KEYS; None: the schema's)
    policy_settings: Mapping[str, Any] | None = None
    n_examples: int = 4
    batch_rows: int = 4

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> EvaluationSettings:
        """From ``stage_params(config)["evaluate"]``."""
        return cls(**params)
