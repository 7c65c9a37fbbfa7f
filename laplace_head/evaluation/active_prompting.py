"""Stage 8, aggregation: clicks-to-quality of every click policy, from the per-shard JSONL.

One record per (image, policy) (:mod:`laplace_head.interactive.records`, the JSONL's owner)
holds the IoU of the base mask and of the head mask after each
click (click 1 is the RITM first click, the same for every policy). A record that stopped early
(the oracle found no error left) keeps its last IoU for the remaining clicks.

Reported, overall and per class (classes live under ``per_class``, never beside ``overall``):

- ``miou@k`` for k = 1..K (mean IoU over images after k clicks) and ``auc`` (mean of mIoU@k
  over the K clicks), for the head and for the base segmenter;
- ``noc@85``/``noc@90``: mean number of clicks to reach that IoU (K when never reached) and
  ``nof@85``/``nof@90``: how many images never reach it;
- paired per-image comparisons of the AUC: each policy vs ``random`` (head masks,
  ``<policy>_vs_random``), head vs base under ``oracle``, and each posterior rule vs its
  posterior-free twin (:data:`~laplace_head.interactive.clicks.POSTERIOR_TWINS`,
  ``<rule>_vs_twin``, the entry naming the ``twin``) when the twin ran too; mean difference,
  a seeded bootstrap 95% CI and a Wilcoxon signed-rank p (two-sided; 1.0 when every
  difference is zero). ``twins_not_run`` names each posterior rule that ran without its twin
  (``rule -> twin``), so a missing comparison is never silent.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from laplace_head.interactive.clicks import posterior_twin
from laplace_head.interactive.records import CLASS, POLICY, SAMPLE_ID, iou_key, read_records
from laplace_head.util.atomic import atomic_write_csv, atomic_write_json, atomic_write_text
from laplace_head.util.seeding import derive_seed

LOGGER = logging.getLogger(__name__)
THRESHOLDS = (0.85, 0.90)
MODELS = ("head", "base")
BASELINE_POLICY = "random"
ORACLE_POLICY = "oracle"


def paired_key(policy: str) -> str:
    """The report's ``paired`` entry comparing ``policy`` with the random baseline."""
    return f"{policy}_vs_{BASELINE_POLICY}"


def twin_key(policy: str) -> str:
    """The report's ``paired`` entry comparing posterior rule ``policy`` with its twin."""
    return f"{policy}_vs_twin"


def iou_matrix(records: Sequence[Mapping[str, Any]], model: str, max_clicks: int) -> np.ndarray:
    """(n_records, max_clicks) IoU after click 1..K; short records keep their last value."""
    out = np.zeros((len(records), max_clicks))
    for row, record in enumerate(records):
        values = list(record[iou_key(model)])[:max_clicks]
        if not values:
            continue
        out[row, : len(values)] = values
        out[row, len(values) :] = values[-1]
    return out


def curve_metrics(ious: np.ndarray) -> dict[str, Any]:
    """mIoU@k, AUC, NoC and NoF of an (images, K) IoU matrix."""
    n_images, max_clicks = ious.shape
    metrics: dict[str, Any] = {"n_images": int(n_images)}
    if n_images == 0:
        return metrics
    miou = ious.mean(axis=0)
    metrics["miou"] = [float(v) for v in miou]
    metrics["auc"] = float(miou.mean())
    for threshold in THRESHOLDS:
        reached = ious >= threshold
        first = np.where(reached.any(axis=1), reached.argmax(axis=1) + 1, max_clicks)
        tag = int(round(threshold * 100))
        metrics[f"noc@{tag}"] = float(first.mean())
        metrics[f"nof@{tag}"] = int((~reached.any(axis=1)).sum())
    return metrics


#: Stage 7's per-image paired comparison of the head's IoU with the base segmenter's (its
#: metrics.json ``paired``; the ablation's heads table reads it).
HEAD_VS_BASE_IOU = "head_vs_base_iou"


def bootstrap_draws(n: int, n_bootstrap: int, seed: int, key: str) -> np.ndarray:
    """(n_bootstrap, n) image indices drawn with replacement, seeded by ``key``."""
    rng = np.random.default_rng(derive_seed(seed, "bootstrap", key))
    return rng.integers(0, n, size=(n_bootstrap, n))


def ci95(values: np.ndarray) -> list[float]:
    """The percentile 95% interval of bootstrap statistics."""
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def paired_comparison(
    differences: np.ndarray, n_bootstrap: int, seed: int, key: str
) -> dict[str, Any]:
    """Mean of per-image differences, a bootstrap 95% CI and a Wilcoxon signed-rank p."""
    from scipy import stats

    differences = np.asarray(differences, dtype=np.float64)
    n = len(differences)
    if n == 0:
        return {"n": 0}
    means = differences[bootstrap_draws(n, n_bootstrap, seed, key)].mean(axis=1)
    if np.allclose(differences, 0.0):
        p_value = 1.0
    else:
        p_value = float(stats.wilcoxon(differences, zero_method="zsplit").pvalue)
    return {
        "n": n,
        "mean_difference": float(differences.mean()),
        "ci95": ci95(means),
        "wilcoxon_p": p_value,
        "n_better": int((differences > 0).sum()),
        "n_worse": int((differences < 0).sum()),
    }


def _per_image_auc(records: Sequence[Mapping[str, Any]], model: str, max_clicks: int) -> dict:
    ious = iou_matrix(records, model, max_clicks)
    return {record[SAMPLE_ID]: float(ious[i].mean()) for i, record in enumerate(records)}


def _paired_auc(
    by_policy: Mapping[str, Mapping[str, float]],
    policy: str,
    other: str,
    n_bootstrap: int,
    seed: int,
    key: str,
) -> dict[str, Any]:
    """:func:`paired_comparison` of the per-image head AUC of ``policy`` minus ``other``."""
    common = sorted(set(by_policy[other]) & set(by_policy[policy]))
    differences = np.array([by_policy[policy][s] - by_policy[other][s] for s in common])
    return paired_comparison(differences, n_bootstrap, seed, key)


def aggregate(
    records: Sequence[Mapping[str, Any]], max_clicks: int, n_bootstrap: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The stage-8 metrics (see the module docstring) of all records."""
    policies = sorted({r[POLICY] for r in records})
    classes = sorted({r[CLASS] for r in records})
    result: dict[str, Any] = {
        "max_clicks": max_clicks,
        "policies": policies,
        "overall": {},
        "per_class": {},
        "paired": {},
    }
    for policy in policies:
        mine = [r for r in records if r[POLICY] == policy]
        result["overall"][policy] = {
            model: curve_metrics(iou_matrix(mine, model, max_clicks)) for model in MODELS
        }
        for cls in classes:
            subset = [r for r in mine if r[CLASS] == cls]
            result["per_class"].setdefault(cls, {})[policy] = {
                model: curve_metrics(iou_matrix(subset, model, max_clicks)) for model in MODELS
            }
    by_policy = {
        policy: _per_image_auc([r for r in records if r[POLICY] == policy], "head", max_clicks)
        for policy in policies
    }
    if BASELINE_POLICY in by_policy:
        for policy in policies:
            if policy == BASELINE_POLICY:
                continue
            key = paired_key(policy)
            result["paired"][key] = _paired_auc(
                by_policy, policy, BASELINE_POLICY, n_bootstrap, seed, key
            )
    if ORACLE_POLICY in by_policy:
        oracle = [r for r in records if r[POLICY] == ORACLE_POLICY]
        base = _per_image_auc(oracle, "base", max_clicks)
        head = by_policy[ORACLE_POLICY]
        common = sorted(set(head) & set(base))
        differences = np.array([head[s] - base[s] for s in common])
        key = f"head_vs_base_{ORACLE_POLICY}"
        result["paired"][key] = paired_comparison(differences, n_bootstrap, seed, key)
    result["twins_not_run"] = {}
    for policy in policies:
        twin = posterior_twin(policy)
        if twin is None:
            continue
        if twin not in by_policy:
            result["twins_not_run"][policy] = twin
            continue
        key = twin_key(policy)
        paired = _paired_auc(by_policy, policy, twin, n_bootstrap, seed, key)
        result["paired"][key] = {"twin": twin, **paired}
    return result


def metrics_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table row per (scope, policy, model): overall first, then ``class:<name>``."""
    rows = []
    scopes = [("overall", result["overall"])]
    scopes += [(f"class:{cls}", value) for cls, value in sorted(result["per_class"].items())]
    for scope, by_policy in scopes:
        for policy, by_model in sorted(by_policy.items()):
            for model, metrics in by_model.items():
                if not metrics.get("n_images"):
                    continue
                miou = metrics["miou"]
                row = {"scope": scope, "policy": policy, "model": model}
                row["n_images"] = metrics["n_images"]
                for k in sorted({1, 2, 3, 5, 10, len(miou)}):
                    if k <= len(miou):
                        row[f"miou@{k}"] = round(miou[k - 1], 4)
                row["auc"] = round(metrics["auc"], 4)
                for tag in ("noc@85", "noc@90"):
                    row[tag] = round(metrics[tag], 2)
                for tag in ("nof@85", "nof@90"):
                    row[tag] = metrics[tag]
                rows.append(row)
    return rows


def markdown(result: Mapping[str, Any]) -> str:
    """The overall table and the paired comparisons as Markdown."""
    import pandas as pd

    frame = pd.DataFrame([r for r in metrics_rows(result) if r["scope"] == "overall"])
    lines = ["# Active prompting", "", f"Clicks per image: {result['max_clicks']}", ""]
    if len(frame):
        columns = list(frame.columns)
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for values in frame.itertuples(index=False):
            lines.append("| " + " | ".join(str(v) for v in values) + " |")
    lines += [
        "",
        "| comparison (AUC, per image) | n | mean diff | 95% CI | Wilcoxon p | better/worse |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for key, value in result["paired"].items():
        if not value.get("n"):
            continue
        low, high = value["ci95"]
        label = f"{key} ({value['twin']})" if "twin" in value else key
        lines.append(
            f"| {label} | {value['n']} | {value['mean_difference']:+.4f} | "
            f"[{low:+.4f}, {high:+.4f}] | {value['wilcoxon_p']:.3g} | "
            f"{value['n_better']}/{value['n_worse']} |"
        )
    lines += ["", twins_note(result["twins_not_run"])]
    return "\n".join(lines) + "\n"


def twins_note(twins_not_run: Mapping[str, str]) -> str:
    """One sentence naming the posterior rules that ran without their posterior-free twin."""
    if not twins_not_run:
        return "Every posterior rule ran with its posterior-free twin (`<rule>_vs_twin`)."
    missing = ", ".join(f"{rule} (twin {twin})" for rule, twin in twins_not_run.items())
    return (
        f"Posterior rules run without their posterior-free twin, so not compared with it: "
        f"{missing}. Add the twins to the policies to see what the posterior adds."
    )


def plot_curves(result: Mapping[str, Any], out_png: str | os.PathLike) -> None:
    """mIoU vs clicks: head solid, base dashed, one colour per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from laplace_head.util.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, policy in enumerate(result["policies"]):
        colour = colours[index % len(colours)]
        for model, style in (("head", "-"), ("base", "--")):
            metrics = result["overall"][policy][model]
            if not metrics.get("n_images"):
                continue
            clicks = np.arange(1, len(metrics["miou"]) + 1)
            label = f"{policy} {model} (AUC {metrics['auc']:.3f})"
            ax.plot(clicks, metrics["miou"], style, color=colour, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("Active prompting: head (solid) vs base segmenter (dashed)")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def write_report(
    jsonl_paths: Sequence[str | os.PathLike],
    out_files: Mapping[str, str | os.PathLike],
    max_clicks: int,
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Aggregate the shards into ``out_files``: ``metrics``, ``table``, ``markdown``, ``curves``."""
    import pandas as pd

    records = read_records(jsonl_paths)
    result = aggregate(records, max_clicks, n_bootstrap, seed)
    atomic_write_csv(out_files["table"], pd.DataFrame(metrics_rows(result)))
    atomic_write_text(out_files["markdown"], markdown(result))
    plot_curves(result, out_files["curves"])
    atomic_write_json(out_files["metrics"], result)  # last: marks the report complete
    for key, value in result["paired"].items():
        if value.get("n"):
            LOGGER.info(
                "%s: mean AUC difference %+.4f, 95%% CI [%+.4f, %+.4f], Wilcoxon p %.3g",
                key,
                value["mean_difference"],
                *value["ci95"],
                value["wilcoxon_p"],
            )
    if result["twins_not_run"]:
        LOGGER.warning("%s", twins_note(result["twins_not_run"]))
    return result
