"""`snakemake ablation`: one table and one figure over every head x posterior variant of a run.

A row is one posterior variant fitted on one head of ``heads`` (its ``head`` comes from the
posterior's meta; its ``variant`` is :func:`~laplace_head.layout.ablation_label`: the name
alone on the no_image head, ``<head>/<name>`` on another), so the choice below runs over heads x
posterior variants x click rules.

Inputs per variant: its stage-6 ``posterior_meta.json`` (validation NLL and BALD error-AUROC),
its stage-7 ``metrics.json`` on test (NLL, ECE, BALD / entropy error-AUROC of the Laplace head
next to the MAP head and temperature scaling) and its stage-8 report per split (head-mIoU AUC
of every click policy, paired per-image comparisons with ``random`` and, for a posterior rule,
with its posterior-free twin).

The choice is made on val only: the (variant, click rule) whose posterior rule (a key of
:data:`~laplace_head.interactive.clicks.POSTERIOR_TWINS`: a rule that reads the posterior)
beats random by the largest mean per-image AUC difference on the validation split. Its test
figures are then reported as they are: vs random, vs its twin, and the share of the
random-to-oracle AUC gap it closes. Nothing is chosen on test.
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from laplace_head.bayes.posterior_io import meta_summary, read_meta
from laplace_head.evaluation.active_prompting import (
    BASELINE_POLICY,
    HEAD_VS_BASE_IOU,
    ORACLE_POLICY,
    paired_comparison,
    paired_key,
    twin_key,
)
from laplace_head.evaluation.evaluate import CALIBRATION_PAIRS, calibration_key
from laplace_head.interactive.clicks import posterior_twin
from laplace_head.model.head_variant import SEED_HEAD
from laplace_head.util.atomic import (
    atomic_path,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    read_json,
)

LOGGER = logging.getLogger(__name__)
CHOICE_SPLIT, REPORT_SPLIT = "val", "test"
#: The bars for the shipped rule on test: the AUC gain over random, the share of the
#: random-to-oracle gap closed.
MIN_GAIN_OVER_RANDOM, MIN_GAP_CLOSED = 0.03, 0.4
#: The calibration bar on test: BALD error-AUROC at least this, NLL and ECE below both the MAP
#: head's and temperature scaling's.
MIN_BALD_AUROC = 0.80
#: The bars for a head other than the seed's on test (the image head): its IoU at least this
#: much above the base segmenter's and above the seed head's, per-image CIs above 0.
MIN_IOU_OVER_BASE, MIN_IOU_OVER_SEED_HEAD = 0.05, 0.03


def is_posterior_rule(policy: str) -> bool:
    """A click rule that reads the posterior (it has a posterior-free twin)."""
    return posterior_twin(policy) is not None


def _overall(metrics: Mapping[str, Any], method: str, key: str) -> float | None:
    value = ((metrics.get("overall") or {}).get(method) or {}).get(key)
    return None if value is None else float(value)


def _clicks_summary(report: Mapping[str, Any] | None) -> dict[str, Any]:
    """Per policy: head AUC, the paired AUC difference with random (mean, CI, n) and, for a
    posterior rule, with its twin (``twin`` names it; no ``vs_twin`` when it did not run)."""
    if not report:
        return {}
    out = {}
    for policy, models in report.get("overall", {}).items():
        head = models.get("head") or {}
        entry: dict[str, Any] = {"auc": head.get("auc"), "miou": head.get("miou")}
        paired = report.get("paired", {}).get(paired_key(policy)) or {}
        if paired.get("n"):
            entry.update(
                vs_random=paired["mean_difference"],
                vs_random_ci95=paired["ci95"],
                vs_random_better_worse=[paired["n_better"], paired["n_worse"]],
                n_images=paired["n"],
            )
        if is_posterior_rule(policy):
            entry["twin"] = posterior_twin(policy)
            twin = report.get("paired", {}).get(twin_key(policy)) or {}
            if twin.get("n"):
                entry.update(
                    vs_twin=twin["mean_difference"],
                    vs_twin_ci95=twin["ci95"],
                    vs_twin_better_worse=[twin["n_better"], twin["n_worse"]],
                )
        out[policy] = entry
    return out


def variant_row(
    name: str,
    meta: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    clicks: Mapping[str, Mapping[str, Any] | None],
) -> dict[str, Any]:
    """Everything the summary knows about one variant (``meta``: its posterior_meta.json)."""
    paired = evaluation.get("paired") or {}
    row: dict[str, Any] = {
        "variant": name,
        "head": meta.get("head", SEED_HEAD.value),  # fits from before heads: no_image
        **meta_summary(meta),
        "test_nll": _overall(evaluation, "laplace", "nll"),
        "test_nll_map": _overall(evaluation, "map", "nll"),
        "test_nll_temp_scaled": _overall(evaluation, "map_temperature_scaled", "nll"),
        "test_ece": _overall(evaluation, "laplace", "ece"),
        "test_ece_map": _overall(evaluation, "map", "ece"),
        "test_ece_temp_scaled": _overall(evaluation, "map_temperature_scaled", "ece"),
        "test_bald_auroc": _overall(evaluation, "laplace", "auroc_bald"),
        "test_entropy_auroc": _overall(evaluation, "laplace", "auroc_entropy"),
        "test_iou": _overall(evaluation, "laplace", "iou"),
        "test_iou_base": _overall(evaluation, "base", "iou"),
        "per_image_iou": evaluation.get("per_image_iou"),
        "test_iou_vs_base": paired.get(HEAD_VS_BASE_IOU),
        "test_calibration_vs_baselines": {
            calibration_key(*pair): paired.get(calibration_key(*pair)) for pair in CALIBRATION_PAIRS
        },
        "clicks": {split: _clicks_summary(report) for split, report in clicks.items()},
    }
    nll, nll_map, nll_ts = row["test_nll"], row["test_nll_map"], row["test_nll_temp_scaled"]
    ece, ece_map, ece_ts = row["test_ece"], row["test_ece_map"], row["test_ece_temp_scaled"]
    auroc = row["test_bald_auroc"]
    row["calibration_goal_met"] = bool(
        None not in (nll, nll_map, nll_ts, ece, ece_map, ece_ts, auroc)
        and auroc >= MIN_BALD_AUROC
        and nll < min(nll_map, nll_ts)
        and ece < min(ece_map, ece_ts)
    )
    return row


def head_comparison(
    rows: Sequence[Mapping[str, Any]], n_bootstrap: int, seed: int
) -> list[dict[str, Any]]:
    """One entry per head (the MAP head's mask is the same for every variant of a head, so
    its first row stands for it): test IoU, the base segmenter's, the per-image paired
    difference with the base (stage 7) and, for every head but the seed's, with the seed head
    on the images both were scored on; ``goal_met``: both differences at least
    :data:`MIN_IOU_OVER_BASE` / :data:`MIN_IOU_OVER_SEED_HEAD` with the CIs above 0."""
    first: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        first.setdefault(row.get("head", SEED_HEAD.value), row)
    seed_row = first.get(SEED_HEAD.value)
    out = []
    for head, row in first.items():
        entry: dict[str, Any] = {
            "head": head,
            "test_iou": row.get("test_iou"),
            "test_iou_base": row.get("test_iou_base"),
            "vs_base": row.get("test_iou_vs_base"),
        }
        if head != SEED_HEAD.value and seed_row is not None:
            entry["vs_seed_head"] = _paired_iou(
                row.get("per_image_iou"), seed_row.get("per_image_iou"), n_bootstrap, seed, head
            )
            entry["goal_met"] = _iou_goal(entry["vs_base"], MIN_IOU_OVER_BASE) and _iou_goal(
                entry["vs_seed_head"], MIN_IOU_OVER_SEED_HEAD
            )
        out.append(entry)
    return out


def _paired_iou(
    per_image: Mapping[str, Any] | None,
    seed_per_image: Mapping[str, Any] | None,
    n_bootstrap: int,
    seed: int,
    head: str,
) -> dict[str, Any] | None:
    """Head IoU minus the seed head's per image, on the sample ids both hold; None without."""
    if not per_image or not seed_per_image:
        return None
    ours = dict(zip(per_image["sample_id"], per_image["head"]))
    theirs = dict(zip(seed_per_image["sample_id"], seed_per_image["head"]))
    common = sorted(set(ours) & set(theirs))
    differences = np.array([ours[s] - theirs[s] for s in common], dtype=np.float64)
    return paired_comparison(differences, n_bootstrap, seed, f"{head}_vs_{SEED_HEAD.value}_iou")


def _iou_goal(paired: Mapping[str, Any] | None, minimum: float) -> bool:
    return bool(
        paired
        and paired.get("n")
        and paired["mean_difference"] >= minimum
        and paired["ci95"][0] > 0
    )


def val_best_posterior_rule(row: Mapping[str, Any]) -> tuple[str, float] | None:
    """The variant's posterior rule with the largest val AUC gain over random, and that gain."""
    val = row["clicks"].get(CHOICE_SPLIT) or {}
    gains = {
        p: e["vs_random"]
        for p, e in val.items()
        if is_posterior_rule(p) and e.get("vs_random") is not None
    }
    if not gains:
        return None
    policy = max(gains, key=gains.get)
    return policy, gains[policy]


def choose(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The (variant, posterior rule) with the largest val AUC gain over random, with its test
    figures and the goals (``click_goal_met``: >= +0.03 over random with the CI above 0;
    ``twin_goal_met``: the CI vs its twin above 0; ``gap_goal_met``: >= 40 % of the
    random-to-oracle gap closed); None without val."""
    candidates = [(row, best) for row in rows if (best := val_best_posterior_rule(row))]
    if not candidates:
        return None
    row, (policy, gain) = max(candidates, key=lambda candidate: candidate[1][1])
    best: dict[str, Any] = {
        "variant": row["variant"],
        "head": row.get("head", SEED_HEAD.value),
        "policy": policy,
        "val_vs_random": gain,
    }
    test = row["clicks"].get(REPORT_SPLIT) or {}
    entry = test.get(best["policy"]) or {}
    best["test_vs_random"] = entry.get("vs_random")
    best["test_vs_random_ci95"] = entry.get("vs_random_ci95")
    best["test_auc"] = entry.get("auc")
    random_auc = (test.get(BASELINE_POLICY) or {}).get("auc")
    oracle_auc = (test.get(ORACLE_POLICY) or {}).get("auc")
    best["test_random_auc"], best["test_oracle_auc"] = random_auc, oracle_auc
    if None not in (random_auc, oracle_auc, entry.get("auc")) and oracle_auc != random_auc:
        best["test_oracle_gap_closed"] = (entry["auc"] - random_auc) / (oracle_auc - random_auc)
    ci = best["test_vs_random_ci95"]
    best["click_goal_met"] = bool(
        best["test_vs_random"] is not None
        and best["test_vs_random"] >= MIN_GAIN_OVER_RANDOM
        and ci
        and ci[0] > 0
    )
    best["twin"] = posterior_twin(policy)
    best["test_vs_twin"] = entry.get("vs_twin")
    best["test_vs_twin_ci95"] = entry.get("vs_twin_ci95")
    twin_ci = best["test_vs_twin_ci95"]
    best["twin_goal_met"] = bool(twin_ci and twin_ci[0] > 0)
    gap = best.get("test_oracle_gap_closed")
    best["gap_goal_met"] = bool(gap is not None and gap >= MIN_GAP_CLOSED)
    return best


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) >= 1e4 or 0 < abs(value) < 1e-3
            else (f"{value:.{digits}f}")
        )
    return str(value)


def _diff(entry: Mapping[str, Any] | None, against: str = "vs_random") -> str:
    if not entry or entry.get(against) is None:
        return "-"
    low, high = entry[f"{against}_ci95"]
    return f"{entry[against]:+.3f} [{low:+.3f}, {high:+.3f}]"


def _twin_cell(entry: Mapping[str, Any] | None) -> str:
    """A posterior rule's difference with its twin, or why there is none; "" for the rest."""
    if not entry or "twin" not in entry:
        return ""
    if entry.get("vs_twin") is None:
        return f"{entry['twin']} not run"
    return f"{_diff(entry, 'vs_twin')} ({entry['twin']})"


def markdown(summary: Mapping[str, Any]) -> str:
    """The two ablation tables (posteriors; click rules) and the val choice, as Markdown."""
    rows = summary["variants"]
    lines = [
        "# Ablation: heads x posterior variants x click rules",
        "",
        "## Posteriors (val from stage 6, test from stage 7)",
        "",
        "| variant | layer | approx | tuning | prior | T | tau | val NLL (MAP) | val BALD AUROC | "
        "test NLL | test NLL MAP | test NLL temp. scaled | test ECE (MAP / temp. scaled) | "
        "test BALD AUROC | test entropy AUROC | goal met |",
        "|" + "---|" * 16,
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['target_layer']} | {r['approx']} | {r['tuning']} | "
            f"{_fmt(r['prior_precision'], 3)} | {_fmt(r['temperature'], 3)} | "
            f"{_fmt(r['output_temperature'], 3)} | "
            f"{_fmt(r['val_nll'])} ({_fmt(r['val_nll_map'])}) | {_fmt(r['val_bald_auroc'], 3)} | "
            f"{_fmt(r['test_nll'])} | {_fmt(r['test_nll_map'])} | "
            f"{_fmt(r['test_nll_temp_scaled'])} | {_fmt(r['test_ece'])} "
            f"({_fmt(r['test_ece_map'])} / {_fmt(r['test_ece_temp_scaled'])}) | "
            f"{_fmt(r['test_bald_auroc'], 3)} | "
            f"{_fmt(r['test_entropy_auroc'], 3)} | {_fmt(r['calibration_goal_met'])} |"
        )
    lines += [
        "",
        f"Goal: BALD error-AUROC >= {MIN_BALD_AUROC}, NLL and ECE below both the MAP head's "
        "and temperature scaling's (test). tau: the output temperature "
        "(laplace.output_temperature; 1 = none).",
        "",
        *_calibration_section(rows),
        "## Click rules: head-mIoU AUC minus random, and a posterior rule minus its "
        "posterior-free twin, per image (mean [95% bootstrap CI])",
        "",
    ]
    splits = summary["splits"]
    policies = [p for p in summary["policies"] if p != BASELINE_POLICY]
    header = (
        "| variant | rule | "
        + " | ".join(f"{s} AUC | {s} vs random | {s} vs twin" for s in splits)
        + " |"
    )
    lines += [header, "|" + "---|" * (2 + 3 * len(splits))]
    for r in rows:
        for policy in policies:
            cells = []
            for split in splits:
                entry = (r["clicks"].get(split) or {}).get(policy)
                cells += [_fmt((entry or {}).get("auc"), 3), _diff(entry), _twin_cell(entry)]
            lines.append(f"| {r['variant']} | {policy} | " + " | ".join(cells) + " |")
        random_cells = []
        for split in splits:
            entry = (r["clicks"].get(split) or {}).get(BASELINE_POLICY)
            random_cells += [_fmt((entry or {}).get("auc"), 3), "0", ""]
        lines.append(f"| {r['variant']} | random | " + " | ".join(random_cells) + " |")
    lines += _heads_section(summary.get("heads_iou") or [])
    choice = summary.get("choice")
    lines += ["", "## Chosen on val", ""]
    if choice is None:
        lines.append("No posterior rule was clicked on val: nothing chosen.")
    else:
        gap = choice.get("test_oracle_gap_closed")
        test = {
            "vs_random": choice["test_vs_random"],
            "vs_random_ci95": choice["test_vs_random_ci95"],
        }
        lines.append(
            f"Variant **{choice['variant']}** with rule **{choice['policy']}** (val AUC vs "
            f"random {choice['val_vs_random']:+.4f}). On test: {_diff(test)} vs random; "
            f"AUC {_fmt(choice['test_auc'], 3)}, random {_fmt(choice['test_random_auc'], 3)}, "
            f"oracle {_fmt(choice['test_oracle_auc'], 3)}; share of the random-to-oracle gap "
            f"closed {_fmt(gap, 3)}. Goal (>= +0.03 with CI above 0) "
            f"{'met' if choice['click_goal_met'] else 'not met'}."
        )
        twin = {"vs_twin": choice["test_vs_twin"], "vs_twin_ci95": choice["test_vs_twin_ci95"]}
        versus = (
            f"{_diff(twin, 'vs_twin')} vs its twin {choice['twin']}"
            if choice["test_vs_twin"] is not None
            else f"its twin {choice['twin']} was not run, so nothing shows what the posterior adds"
        )
        lines.append(
            f"On test, {versus}; beating the twin (CI above 0) "
            f"{'met' if choice['twin_goal_met'] else 'not met'}; closing >= 40 % of the gap "
            f"{'met' if choice['gap_goal_met'] else 'not met'}."
        )
    return "\n".join(lines) + "\n"


def _calibration_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Stage 7's per-image calibration comparisons of every variant (baseline minus Laplace,
    > 0: the posterior is better), empty when no variant has them."""
    if not any(any((r.get("test_calibration_vs_baselines") or {}).values()) for r in rows):
        return []
    names = [f"{metric.upper()} {baseline}" for metric, baseline in CALIBRATION_PAIRS]
    lines = [
        "Test NLL and ECE, baseline minus Laplace, images resampled (mean [95% bootstrap CI]; "
        "> 0: the posterior is better):",
        "",
        "| variant | " + " | ".join(names) + " |",
        "|" + "---|" * (1 + len(names)),
    ]
    for r in rows:
        entries = r.get("test_calibration_vs_baselines") or {}
        cells = []
        for pair in CALIBRATION_PAIRS:
            entry = entries.get(calibration_key(*pair)) or {}
            if not entry.get("n"):
                cells.append("-")
                continue
            low, high = entry["ci95"]
            cells.append(f"{entry['mean_difference']:+.4f} [{low:+.4f}, {high:+.4f}]")
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _paired_cell(paired: Mapping[str, Any] | None) -> str:
    if not paired or not paired.get("n"):
        return "-"
    low, high = paired["ci95"]
    return (
        f"{paired['mean_difference']:+.3f} [{low:+.3f}, {high:+.3f}] "
        f"({paired['n_better']}/{paired['n_worse']} of {paired['n']})"
    )


def _heads_section(heads: Sequence[Mapping[str, Any]]) -> list[str]:
    """The heads' test IoU table (stage 7's MAP mask, per image), empty for one head."""
    if len(heads) < 2:
        return []
    lines = [
        "",
        "## Heads: test IoU (stage 7), per-image difference (mean [95% bootstrap CI] "
        "(better/worse of n))",
        "",
        f"| head | IoU | base IoU | head - base | head - {SEED_HEAD.value} | goal met |",
        "|---|---|---|---|---|---|",
    ]
    for entry in heads:
        lines.append(
            f"| {entry['head']} | {_fmt(entry['test_iou'], 3)} | "
            f"{_fmt(entry['test_iou_base'], 3)} | {_paired_cell(entry['vs_base'])} | "
            f"{_paired_cell(entry.get('vs_seed_head'))} | {_fmt(entry.get('goal_met'))} |"
        )
    lines += [
        "",
        f"Goal for a head other than {SEED_HEAD.value}: IoU >= base + {MIN_IOU_OVER_BASE} and "
        f">= {SEED_HEAD.value} + {MIN_IOU_OVER_SEED_HEAD}, both CIs above 0.",
    ]
    return lines


#: A variant row's nested entries, which the flat CSV leaves to metrics.json.
_NOT_IN_TABLE = ("clicks", "per_image_iou", "test_iou_vs_base", "test_calibration_vs_baselines")


def table_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flat CSV rows: one per (variant, split, policy) with the posterior's columns."""
    rows = []
    for r in summary["variants"]:
        base = {k: v for k, v in r.items() if k not in _NOT_IN_TABLE}
        for split, by_policy in r["clicks"].items():
            for policy, entry in by_policy.items():
                ci = entry.get("vs_random_ci95") or [None, None]
                twin_ci = entry.get("vs_twin_ci95") or [None, None]
                rows.append(
                    {
                        **base,
                        "split": split,
                        "policy": policy,
                        "head_auc": entry.get("auc"),
                        "vs_random": entry.get("vs_random"),
                        "vs_random_ci_low": ci[0],
                        "vs_random_ci_high": ci[1],
                        "twin": entry.get("twin"),
                        "vs_twin": entry.get("vs_twin"),
                        "vs_twin_ci_low": twin_ci[0],
                        "vs_twin_ci_high": twin_ci[1],
                    }
                )
    return rows


def _curve_rows(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, Mapping, str, Mapping]]:
    """(index, row, its posterior rule chosen on val, its test clicks) of every variant the
    clicks-to-IoU panel draws."""
    curves = []
    for index, r in enumerate(rows):
        best, test = val_best_posterior_rule(r), r["clicks"].get(REPORT_SPLIT)
        if best is not None and test:
            curves.append((index, r, best[0], test))
    return curves


def clicks_panel_note(summary: Mapping[str, Any]) -> str | None:
    """Why the figure's clicks-to-IoU panel has no curve (no variant has a posterior rule
    chosen on val together with test clicks, e.g. a sweep on val only), or None."""
    if _curve_rows(summary["variants"]):
        return None
    clicked = ", ".join(summary.get("splits") or []) or "no split"
    return (
        f"No curve: it needs a posterior rule chosen on val and clicks on {REPORT_SPLIT}; "
        f"this run clicked on {clicked} (ablation.splits). The tables hold its figures."
    )


def plot(summary: Mapping[str, Any], out_png: str | os.PathLike) -> None:
    """Left: test BALD error-AUROC vs test NLL per variant (MAP and temperature scaling as
    lines). Right: test mIoU vs clicks of each variant's val-best posterior rule, random,
    oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = summary["variants"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, r in enumerate(rows):
        if r["test_bald_auroc"] is None or r["test_nll"] is None:
            continue
        colour = colours[index % len(colours)]
        left.scatter(r["test_bald_auroc"], r["test_nll"], color=colour, s=50)
        left.annotate(
            r["variant"],
            (r["test_bald_auroc"], r["test_nll"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    heads = list(dict.fromkeys(r.get("head", SEED_HEAD.value) for r in rows))
    for key, label, style in (
        ("test_nll_map", "MAP head", "--"),
        ("test_nll_temp_scaled", "temperature scaling", ":"),
    ):
        for head in heads:  # each head has its own MAP head and temperature scaling
            values = [r[key] for r in rows if r[key] is not None and r.get("head") == head]
            if values:
                named = f"{label} ({head})" if len(heads) > 1 else label
                left.axhline(values[0], color="k", linestyle=style, linewidth=1, label=named)
    left.axvline(0.5, color="tab:red", linewidth=0.8, alpha=0.6, label="chance")
    left.axvline(
        MIN_BALD_AUROC,
        color="tab:green",
        linewidth=0.8,
        alpha=0.6,
        label=f"goal {MIN_BALD_AUROC}",
    )
    left.set_xlabel("test BALD error-AUROC (higher: flags wrong pixels)")
    left.set_ylabel("test pixel NLL (lower is better)")
    left.set_title("Posterior variants: uncertainty quality vs calibration")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)

    note = clicks_panel_note(summary)
    if note is not None:
        right.text(
            0.5, 0.5, textwrap.fill(note, 55), ha="center", va="center", transform=right.transAxes
        )
    drawn_reference: set[str] = set()  # heads whose random and oracle curves are drawn
    for index, r, rule, test in _curve_rows(rows):
        entry = test.get(rule) or {}
        if entry.get("miou"):
            clicks = np.arange(1, len(entry["miou"]) + 1)
            right.plot(
                clicks,
                entry["miou"],
                color=colours[index % len(colours)],
                label=f"{r['variant']} / {rule} (AUC {entry['auc']:.3f})",
            )
        head = r.get("head", SEED_HEAD.value)
        if head not in drawn_reference:
            for policy, style in ((BASELINE_POLICY, "--"), (ORACLE_POLICY, ":")):
                ref = test.get(policy) or {}
                if ref.get("miou"):
                    right.plot(
                        np.arange(1, len(ref["miou"]) + 1),
                        ref["miou"],
                        style,
                        color="k" if head == SEED_HEAD.value else "tab:gray",
                        label=f"{policy} ({r['variant']}, AUC {ref['auc']:.3f})",
                    )
            drawn_reference.add(head)
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("clicks")
    right.set_ylabel("test head mIoU")
    right.set_title("Clicks-to-IoU: each variant's posterior rule chosen on val")
    right.grid(alpha=0.3)
    if note is None:
        right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_ablation(
    variants: Mapping[str, Mapping[str, Any]],
    out_files: Mapping[str, str | os.PathLike],
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Read every variant's outputs and write ``metrics``, ``table``, ``markdown``, ``figure``.

    ``variants``: name -> {"meta": path, "eval": path, "clicks": {split: path}}.
    """
    import pandas as pd

    rows = []
    for name, paths in variants.items():
        clicks = {split: read_json(path) for split, path in paths["clicks"].items()}
        rows.append(variant_row(name, read_meta(paths["meta"]), read_json(paths["eval"]), clicks))
    summary = {
        "heads": list(settings.get("heads") or [SEED_HEAD.value]),
        "splits": list(settings["splits"]),
        "policies": list(settings["policies"]),
        "max_clicks": settings["max_clicks"],
        "choice_split": CHOICE_SPLIT,
        "report_split": REPORT_SPLIT,
        "variants": rows,
    }
    summary["choice"] = choose(rows)
    summary["heads_iou"] = head_comparison(rows, settings["n_bootstrap"], settings["seed"])
    atomic_write_csv(out_files["table"], pd.DataFrame(table_rows(summary)))
    atomic_write_text(out_files["markdown"], markdown(summary))
    plot(summary, out_files["figure"])
    atomic_write_json(out_files["metrics"], summary)  # last: marks the report complete
    for r in rows:
        LOGGER.info(
            "%s: test NLL %s (MAP %s), ECE %s, BALD error-AUROC %s",
            r["variant"],
            _fmt(r["test_nll"]),
            _fmt(r["test_nll_map"]),
            _fmt(r["test_ece"]),
            _fmt(r["test_bald_auroc"], 3),
        )
    if summary["choice"]:
        LOGGER.info(
            "chosen on val: %s / %s", summary["choice"]["variant"], summary["choice"]["policy"]
        )
    return summary
