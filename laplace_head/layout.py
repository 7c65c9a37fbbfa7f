"""Every output path under ``data.project_root``, in one place.

The rules (through ``rules/common.smk``), the workflow scripts, the package, the stand-alone
commands and the benchmarks all ask :class:`ProjectLayout`; no other module spells an output
path. Methods take plain strings, so Snakemake wildcards pass straight through
(``layout.split_h5("{split}")`` is the pattern ``.../training_data/no_image/{split}.h5``).

::

    <project_root>/
      manifests/            all_samples.csv, train.csv, val.csv, test.csv, split_registry.csv,
                            manifest_report.json                                     (stage 1)
      prompt_sets/<split>/  <safe_id>.json, _shards/shard_NNNN.json                   (stage 2)
      sam_precompute/<split>/<safe_id>/promptset_NNNN/..., _shards/shard_NNNN.json   (stage 3)
      training_data/no_image/ <split>_index.csv, <split>_failures.csv         (stage 4, shared)
      training_data/<head>/ <split>.h5                                        (stage 4.5)
      checkpoints/<head>/run_<id>/  best.pt, last.pt, ..., training_summary.json      (stage 5)
      laplace/<head>/run_<id>/      laplace_state.pt, laplace_config.yaml,
                                    posterior_meta.json, val_nll_grid.png             (stage 6)
      reports/eval/run_<id>/        metrics.{json,csv,md}, reliability.png, ...       (stage 7)
      reports/active_prompting/run_<id>/  shards/<split>/shard_NNNN.jsonl,
                                    metrics.{json,csv,md}, curves.png                 (stage 8)
      laplace/<head>/run_<id>/variants/<variant>/   the same files, per ablation variant
      reports/ablation/run_<id>/    ablation.{json,csv,md}, ablation.png                (ablation)
                    <variant>/eval/ (stage 7 files), <variant>/active_prompting/  shards/<split>/,
                                    <split>/metrics.{json,csv,md}, <split>/curves.png
      reports/debug_panels/         <split>_panels.json, <split>_overview.png, *.png
      logs/<rule>/..., benchmarks/<rule>/...
      laplace_head.lock             the running workflow or command, while it runs

``<head>`` is the head variant (:class:`~laplace_head.model.head_variant.HeadVariant`); the
seed's head sees no image, hence ``no_image``. Stages 1-4 are shared by every head (the stage-4
index lives in the seed head's folder); ``training_data/<head>/<split>.h5``, ``checkpoints/``,
``laplace/``, the reports and the logs of stages 5-8 are per head. The seed head's reports and
logs keep the seed's paths; every other head's gain a ``<head>/`` folder right under
``reports/eval/``, ``reports/active_prompting/``, ``reports/ablation/`` and ``logs/<rule>/``
(e.g. ``reports/eval/image/run_<id>/``).
"""

from __future__ import annotations

import os
from pathlib import Path

from laplace_head.model.head_variant import SEED_HEAD

SPLITS = ("train", "val", "test")
HEAD_VARIANT = SEED_HEAD.value
SHARD_FORMAT = "{:04d}"
RUN_PREFIX = "run_"  # a training run's folder: run_<id>
SHARD_PATTERN = r"\d{4}"  # what SHARD_FORMAT writes (a Snakemake wildcard constraint)

# File names other modules need to find inside a folder of the layout.
PROJECT_LOCK = "laplace_head.lock"
BEST_CHECKPOINT = "best.pt"
TRAINING_SUMMARY = "training_summary.json"
LAPLACE_STATE = "laplace_state.pt"
LAPLACE_CONFIG = "laplace_config.yaml"
POSTERIOR_META = "posterior_meta.json"
VAL_NLL_GRID = "val_nll_grid.png"
EVAL_FILES = {
    "metrics": "metrics.json",
    "table": "metrics.csv",
    "markdown": "metrics.md",
    "reliability": "reliability.png",
    "examples": "uncertainty_examples.png",
}

ACTIVE_PROMPTING_FILES = {
    "metrics": "metrics.json",
    "table": "metrics.csv",
    "markdown": "metrics.md",
    "curves": "curves.png",
}


ABLATION_FILES = {
    "metrics": "ablation.json",
    "table": "ablation.csv",
    "markdown": "ablation.md",
    "figure": "ablation.png",
}


class ProjectLayout:
    """The output tree of one project (and, for stages 5-7, one training run).

    Parameters
    ----------
    project_root
        ``data.project_root``.
    run_id
        ``training.run_id`` (or the wildcard ``"{run_id}"``); needed only by the run paths.
    head_variant
        Folder of the head variant under ``training_data/``, ``checkpoints/``, ``laplace/``.
    posterior
        An ``ablation.variants`` name (or the wildcard ``"{variant}"``): stages 6-8 of that
        posterior variant of the run, fitted on the same head (see :meth:`for_posterior`).
    """

    def __init__(
        self,
        project_root: str | os.PathLike,
        run_id: str | None = None,
        head_variant: str = HEAD_VARIANT,
        posterior: str | None = None,
    ) -> None:
        self.root = Path(project_root)
        self.run_id = run_id
        self.head_variant = head_variant
        self.posterior = posterior

    def __repr__(self) -> str:
        extra = "".join(f", head_variant={h!r}" for h in self._head_folder)
        extra += f", posterior={self.posterior!r}" if self.posterior else ""
        return f"ProjectLayout({str(self.root)!r}, run_id={self.run_id!r}{extra})"

    def for_head(self, head: str) -> ProjectLayout:
        """The same project and run with head variant ``head`` (or the wildcard ``"{head}"``)."""
        return ProjectLayout(self.root, self.run_id, str(head), self.posterior)

    @property
    def _head_folder(self) -> list[str]:
        """The head's folder under the reports and logs: none for the seed head (its paths are
        the seed's), ``[<head>]`` for every other."""
        return [] if self.head_variant == HEAD_VARIANT else [self.head_variant]

    def for_posterior(self, name: str) -> ProjectLayout:
        """The same run with the stage 6-8 paths of ablation variant ``name``."""
        return ProjectLayout(self.root, self.run_id, self.head_variant, name)

    @classmethod
    def of_run_dir(cls, run_dir: str | os.PathLike) -> ProjectLayout | None:
        """The layout whose :attr:`run_dir` is ``run_dir`` (``checkpoints/<head>/run_<id>``)."""
        run_dir = Path(run_dir)
        layout = cls._of_run_folder(run_dir)
        return layout if layout is not None and layout.run_dir == run_dir else None

    @classmethod
    def of_laplace_dir(cls, laplace_dir: str | os.PathLike) -> ProjectLayout | None:
        """The layout whose :attr:`laplace_dir` is ``laplace_dir`` (a run's or a variant's)."""
        laplace_dir = Path(laplace_dir)
        posterior, run = None, laplace_dir
        if laplace_dir.parent.name == "variants":
            posterior, run = laplace_dir.name, laplace_dir.parent.parent
        layout = cls._of_run_folder(run, posterior)
        return layout if layout is not None and layout.laplace_dir == laplace_dir else None

    @classmethod
    def _of_run_folder(cls, run: Path, posterior: str | None = None) -> ProjectLayout | None:
        """The layout read off a ``<top>/<head>/run_<id>`` folder (checked by the caller)."""
        if not run.name.startswith(RUN_PREFIX) or len(run.parents) < 3:
            return None
        return cls(run.parents[2], run.name[len(RUN_PREFIX) :], run.parent.name, posterior)

    def with_run(self, run_id: str) -> ProjectLayout:
        """The same project, another run."""
        return ProjectLayout(self.root, run_id, self.head_variant, self.posterior)

    def _run_name(self) -> str:
        if not self.run_id:
            raise ValueError("this path belongs to a training run: give ProjectLayout a run_id")
        return f"{RUN_PREFIX}{self.run_id}"

    def project(self) -> ProjectLayout:
        """The same project and head without a run: the layout of stages 1-4.5 and their
        logs."""
        return ProjectLayout(self.root, None, self.head_variant)

    @property
    def lock(self) -> Path:
        """The project's run lock (:mod:`laplace_head.util.project_lock`): one run at a time."""
        return self.root / PROJECT_LOCK

    # --- stage 1 ---------------------------------------------------------------------------
    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    def manifest(self, name: str) -> Path:
        """``manifests/<name>.csv`` for ``all_samples``, a split, or ``split_registry``."""
        return self.manifests_dir / f"{name}.csv"

    @property
    def manifest_report(self) -> Path:
        return self.manifests_dir / "manifest_report.json"

    # --- stage 2 ---------------------------------------------------------------------------
    def prompt_sets_dir(self, split: str) -> Path:
        return self.root / "prompt_sets" / split

    def promptset_json(self, split: str, safe_id: str) -> Path:
        return self.prompt_sets_dir(split) / f"{safe_id}.json"

    # --- stage 3 ---------------------------------------------------------------------------
    def precompute_dir(self, split: str) -> Path:
        """``sam_precompute/<split>``; its format: :mod:`laplace_head.cache.promptset_format`."""
        return self.root / "sam_precompute" / split

    # --- shards of stages 2 and 3 ------------------------------------------------------------
    def shard_summary(self, stage: str, split: str, shard: str | int) -> Path:
        """``<prompt_sets|sam_precompute>/<split>/_shards/shard_NNNN.json``."""
        folders = {"prompt_sets": self.prompt_sets_dir, "sam_precompute": self.precompute_dir}
        if stage not in folders:
            raise ValueError(f"stage must be one of {', '.join(folders)}; got {stage!r}")
        return folders[stage](split) / "_shards" / f"{_shard_stem(shard)}.json"

    # --- stages 4 and 4.5 --------------------------------------------------------------------
    @property
    def training_data_dir(self) -> Path:
        return self.root / "training_data" / self.head_variant

    @property
    def _shared_training_data_dir(self) -> Path:
        return self.root / "training_data" / HEAD_VARIANT

    def training_index(self, split: str) -> Path:
        """Stage 4's index of ``split``, shared by every head (in the seed head's folder)."""
        return self._shared_training_data_dir / f"{split}_index.csv"

    def training_failures(self, split: str) -> Path:
        return self._shared_training_data_dir / f"{split}_failures.csv"

    def split_h5(self, split: str) -> Path:
        """The head's packed split; its format: :mod:`laplace_head.cache.split_h5`."""
        return self.training_data_dir / f"{split}.h5"

    def base_split_h5(self, split: str) -> Path:
        """The seed head's packed split, which holds the arrays every head shares (an image
        head's split file links to it)."""
        return self._shared_training_data_dir / f"{split}.h5"

    # --- stage 5 ---------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.root / "checkpoints" / self.head_variant / self._run_name()

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / BEST_CHECKPOINT

    @property
    def training_summary(self) -> Path:
        return self.run_dir / TRAINING_SUMMARY

    @property
    def training_curves(self) -> Path:
        return self.run_dir / "training_curves.png"

    @property
    def sanity_check(self) -> Path:
        return self.run_dir / "sanity_check.json"

    # --- stage 6 ---------------------------------------------------------------------------
    @property
    def laplace_dir(self) -> Path:
        run = self.root / "laplace" / self.head_variant / self._run_name()
        return run / "variants" / self.posterior if self.posterior else run

    def laplace_file(self, name: str) -> Path:
        """``state``, ``config``, ``meta`` or ``grid_figure`` of the run's posterior."""
        names = {
            "state": LAPLACE_STATE,
            "config": LAPLACE_CONFIG,
            "meta": POSTERIOR_META,
            "grid_figure": VAL_NLL_GRID,
        }
        return self.laplace_dir / names[name]

    # --- stage 7 ---------------------------------------------------------------------------
    @property
    def eval_dir(self) -> Path:
        if self.posterior:
            return self.ablation_dir / self.posterior / "eval"
        return self.root.joinpath("reports", "eval", *self._head_folder, self._run_name())

    def eval_file(self, name: str) -> Path:
        """One of :data:`EVAL_FILES` (``metrics``, ``table``, ``markdown``, ...)."""
        return self.eval_dir / EVAL_FILES[name]

    def eval_files(self) -> dict[str, Path]:
        """Every file of :data:`EVAL_FILES`, by name."""
        return {name: self.eval_file(name) for name in EVAL_FILES}

    # --- stage 8 ---------------------------------------------------------------------------
    @property
    def active_prompting_dir(self) -> Path:
        if self.posterior:
            return self.ablation_dir / self.posterior / "active_prompting"
        return self.root.joinpath(
            "reports", "active_prompting", *self._head_folder, self._run_name()
        )

    def active_prompting_shard(self, split: str, shard: str | int) -> Path:
        """One JSONL of click records per shard of the split."""
        return self.active_prompting_dir / "shards" / split / f"{_shard_stem(shard)}.jsonl"

    def active_prompting_file(self, name: str, split: str | None = None) -> Path:
        """One of :data:`ACTIVE_PROMPTING_FILES` (``metrics``, ``table``, ``markdown``, ...);
        with ``split`` the report of that split (the ablation clicks on several)."""
        folder = self.active_prompting_dir / split if split else self.active_prompting_dir
        return folder / ACTIVE_PROMPTING_FILES[name]

    def active_prompting_report(self, split: str) -> dict[str, Path]:
        """Every report file of the clicks on ``split``, by name: the run's report covers its
        one configured split; a posterior variant reports each split in its own folder."""
        folder_split = split if self.posterior else None
        return {
            name: self.active_prompting_file(name, folder_split) for name in ACTIVE_PROMPTING_FILES
        }

    # --- ablation ----------------------------------------------------------------------------
    @property
    def ablation_dir(self) -> Path:
        return self.root.joinpath("reports", "ablation", *self._head_folder, self._run_name())

    def ablation_file(self, name: str) -> Path:
        """One of :data:`ABLATION_FILES`: the summary over every variant of the run."""
        return self.ablation_dir / ABLATION_FILES[name]

    def ablation_inputs(
        self, variants: list[str], splits: list[str], heads: list[str] | None = None
    ) -> dict[str, dict]:
        """What the ablation summary reads, per (head, variant): ``{"meta": path, "eval": path,
        "clicks": {split: path}}`` (posterior meta, stage-7 metrics, stage-8 metrics per split),
        keyed by :func:`ablation_label` (the variant's name for this layout's head alone)."""
        inputs = {}
        for head in heads or [self.head_variant]:
            for name in variants:
                variant = self.for_head(head).for_posterior(name)
                inputs[ablation_label(head, name)] = {
                    "meta": variant.laplace_file("meta"),
                    "eval": variant.eval_file("metrics"),
                    "clicks": {s: variant.active_prompting_report(s)["metrics"] for s in splits},
                }
        return inputs

    def ablation_files(self) -> dict[str, Path]:
        """Every file of :data:`ABLATION_FILES`, by name."""
        return {name: self.ablation_file(name) for name in ABLATION_FILES}

    # --- sanity panels -----------------------------------------------------------------------
    @property
    def debug_panels_dir(self) -> Path:
        return self.root / "reports" / "debug_panels"

    def panels_listing(self, split: str) -> Path:
        return self.debug_panels_dir / f"{split}_panels.json"

    def panels_overview(self, split: str) -> Path:
        return self.debug_panels_dir / f"{split}_overview.png"

    # --- Snakemake's logs and benchmarks -------------------------------------------------------
    def log(self, rule: str, split: str | None = None, shard: str | int | None = None) -> Path:
        """The log of one job of ``rule``: ``logs/<rule>/[<head>/][run_<id>/][variant_<name>/]
        [<split>/][shard_NNNN].log``, the parts this layout and the job have (``<head>`` only
        for a head other than the seed's; a seed-head layout without run, variant, split and
        shard: ``logs/<rule>/<rule>.log``)."""
        return self._job_file("logs", rule, split, shard, ".log")

    def benchmark(
        self, rule: str, split: str | None = None, shard: str | int | None = None
    ) -> Path:
        """The benchmark TSV of one job, named as :meth:`log` names its log."""
        return self._job_file("benchmarks", rule, split, shard, ".tsv")

    def _job_file(
        self, top: str, rule: str, split: str | None, shard: str | int | None, suffix: str
    ) -> Path:
        parts = [
            *self._head_folder,
            *([self._run_name()] if self.run_id else []),
            *([f"variant_{self.posterior}"] if self.posterior else []),
            *([split] if split else []),
            *([_shard_stem(shard)] if shard is not None else []),
        ] or [rule]
        *folders, last = parts
        return self.root.joinpath(top, rule, *folders, last + suffix)


def ablation_label(head: str, variant: str) -> str:
    """A posterior variant's name in the ablation summary: ``<variant>`` on the seed head,
    ``<head>/<variant>`` on another."""
    return variant if head == HEAD_VARIANT else f"{head}/{variant}"


def shard_name(shard: int | str) -> str:
    """``0007`` for 7 or "7"; a wildcard such as ``{shard}`` passes through."""
    if isinstance(shard, str) and not shard.isdigit():
        return shard
    return SHARD_FORMAT.format(int(shard))


def _shard_stem(shard: int | str) -> str:
    return f"shard_{shard_name(shard)}"
