"""Stage 6: the laplace-torch fit equals the closed-form Bernoulli GGN, tuning, artifacts, skips."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from helpers.laplace_fixtures import (
    PRIOR_GRID,
    TEMPERATURE_GRID,
    laplace_settings,
    make_fitted_run,
    save_best,
)
from helpers.synthetic_h5 import make_synthetic_h5

from laplace_head.bayes.fit import LaplaceFitError, fit_laplace
from laplace_head.bayes.laplace_torch import (
    PixelBernoulliLayer,
    fit_laplace_model,
    laplace_model,
    make_laplace,
)
from laplace_head.bayes.pixels import PixelStream, pixel_subset, pixels_per_row
from laplace_head.bayes.posterior import load_posterior
from laplace_head.bayes.posterior_io import meta_summary, read_meta, read_posterior_files
from laplace_head.bayes.predictive import probit_logits, tempered_moments
from laplace_head.bayes.tuning import edge_report, probit_nll_sums
from laplace_head.bayes.variant import PosteriorVariant
from laplace_head.errors import LaplaceHeadError
from laplace_head.model.head import NoImageHead
from laplace_head.settings import LaplaceSettings
from laplace_head.util.atomic import read_json

LAST_LAYER_DIAGONAL = PosteriorVariant("final_conv", "diagonal")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_fitted_run(tmp_path_factory.mktemp("laplace_fit"))


@pytest.fixture(scope="module")
def refit(run):
    """laplace-torch's own DiagLaplace, fitted on the run's pixels with its hyperparameters."""
    n_rows = h5py.File(run.train_h5, "r")["logits_256"].shape[0]
    per_row = run.meta["pixels_per_row"]
    model, per_pixel = laplace_model(run.head, LAST_LAYER_DIAGONAL)
    la = make_laplace(
        model, LAST_LAYER_DIAGONAL, run.meta["prior_precision"], run.meta["temperature"]
    )
    fit_laplace_model(la, PixelStream(per_pixel, run.train_h5, 20.0, per_row, 0, 4))
    assert la.n_data == n_rows * per_row
    return la


def _numpy_features(head: NoImageHead, h5_path, clip: float = 20.0):
    """Per-pixel trunk features (N, H*W, C) float64 and labels (N, H*W), read with h5py."""
    with h5py.File(h5_path, "r") as handle:
        logits = np.clip(handle["logits_256"][:].astype(np.float32), -clip, clip)
        inputs = np.stack([logits, handle["pos_map"][:], handle["neg_map"][:]], axis=1)
        labels = handle["gt_mask_256"][:].reshape(len(logits), -1).astype(np.float64)
    with torch.no_grad():
        feats = head.features(torch.from_numpy(inputs.astype(np.float32))).numpy()
    return feats.reshape(feats.shape[0], feats.shape[1], -1).transpose(0, 2, 1), labels


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_fitted_precision_equals_closed_form_bernoulli_ggn(run, refit):
    """precision_i = sum_pixels p(1-p) phi_i^2 / T + prior (bias feature = 1), same pixels."""
    feats, _ = _numpy_features(run.head, run.train_h5)
    n_rows, n_pixels, _ = feats.shape
    per_row = pixels_per_row(n_rows, n_pixels, 1500)
    assert per_row < n_pixels  # the subsampled path is the one under test
    weight = run.head.final_conv.weight.detach().double().numpy().reshape(-1)
    bias = float(run.head.final_conv.bias.detach().double())
    ggn = np.zeros(weight.size + 1)
    for row in range(n_rows):
        subset = pixel_subset(row, n_pixels, per_row, seed=0)
        phi = feats[row] if subset is None else feats[row, subset]
        phi = np.concatenate([phi.astype(np.float64), np.ones((phi.shape[0], 1))], axis=1)
        z = phi[:, :-1] @ weight + bias
        p_times_q = _sigmoid(z) * _sigmoid(-z)  # p (1 - p) without cancellation
        ggn += (p_times_q[:, None] * phi**2).sum(axis=0)
    prior, temperature = run.meta["prior_precision"], run.meta["temperature"]
    expected = ggn / temperature + prior

    saved, _ = read_posterior_files(run.laplace_dir)
    saved_ggn = saved.curvature.blocks[0].eigenvalues.reshape(-1).numpy()
    # entries span ~12 orders of magnitude (nearly dead channels): relative 1e-7, and an
    # absolute floor 1e-9 of the largest entry for entries that float rounding dominates
    floor = 1e-9 * ggn.max()
    np.testing.assert_allclose(saved_ggn, ggn, rtol=1e-7, atol=floor)
    np.testing.assert_array_equal(saved_ggn, refit.H.numpy())  # the saved curvature is la's
    np.testing.assert_allclose(
        refit.posterior_precision.numpy(), expected, rtol=1e-7, atol=floor / temperature
    )
    posterior = load_posterior(run.laplace_dir)
    np.testing.assert_allclose(posterior.variance.double().numpy(), 1 / expected, rtol=1e-6)
    assert run.meta["n_data"] == n_rows * per_row == refit.n_data
    assert run.meta["n_params"] == 17


def test_closed_form_probit_matches_laplace_torch_predictive(run, refit):
    posterior = load_posterior(run.laplace_dir)
    la = refit
    with h5py.File(run.test_h5, "r") as handle:
        inputs = np.stack([handle[k][0] for k in ("logits_256", "pos_map", "neg_map")])
    feats = posterior.features(inputs)[0].flatten(1).T.double()  # (H*W, C)
    with pytest.warns(UserWarning, match="ASDL backend"):
        reference = la(feats, pred_type="glm", link_approx="probit")[:, 1]
    closed_form = posterior.predictive_probability(inputs)[0].flatten()
    np.testing.assert_allclose(closed_form.numpy(), reference.numpy(), atol=2e-6)
    # the two-logit layer reproduces the MAP head exactly
    layer = PixelBernoulliLayer.from_conv(run.head.final_conv)
    logits = layer(feats)
    assert torch.all(logits[:, 0] == 0)
    np.testing.assert_allclose(
        logits[:, 1].detach().numpy(), posterior.map_logits(inputs)[0].flatten().numpy(), atol=1e-5
    )


def test_tempering_changes_the_chosen_nll(run, tmp_path):
    nll = np.asarray(run.meta["grid"]["val_nll"])
    assert nll.shape == (len(PRIOR_GRID), len(TEMPERATURE_GRID))
    assert np.ptp(nll, axis=1).max() > 1e-3  # T moves the NLL at a fixed prior
    assert run.meta["val_nll"] == pytest.approx(nll.min())
    assert run.meta["temperature"] > 1.0
    untempered = fit_laplace(
        run.best,
        run.train_h5,
        run.val_h5,
        tmp_path / "t1_only",
        laplace_settings(PRIOR_GRID, (1.0,), max_pixels_fit=1500),
    )
    assert untempered["temperature"] == 1.0
    np.testing.assert_allclose(np.asarray(untempered["grid"]["val_nll"])[:, 0], nll[:, 0])
    # the untempered posterior sits on the MAP: the tempered one is measurably better
    assert untempered["val_nll"] > run.meta["val_nll"] + 1e-3
    assert run.meta["val_nll"] < run.meta["val_nll_map"]


def test_validation_nll_grid_is_the_probit_nll_of_each_pair(run):
    """Recompute one grid entry independently (numpy) on every validation pixel."""
    feats, labels = _numpy_features(run.head, run.val_h5)
    phi = np.concatenate([feats.reshape(-1, feats.shape[-1]), np.ones((feats[..., 0].size, 1))], 1)
    y = labels.reshape(-1)
    saved, _ = read_posterior_files(run.laplace_dir)
    mean, ggn = saved.mean.numpy(), saved.curvature.blocks[0].eigenvalues.reshape(-1).numpy()
    i, j = 1, 2
    variance = 1 / (ggn / TEMPERATURE_GRID[j] + PRIOR_GRID[i])
    z = phi @ mean / np.sqrt(1 + math.pi / 8 * (phi**2 @ variance))
    nll = np.mean(np.logaddexp(0, z) - y * z)
    # the tuning pass runs the head in float64, this reference on float32 features
    assert run.meta["grid"]["val_nll"][i][j] == pytest.approx(nll, rel=1e-7)
    assert run.meta["n_val_pixels"] == y.size


def test_marglik_grid_matches_closed_form(run, refit):
    saved, _ = read_posterior_files(run.laplace_dir)
    mean, ggn = saved.mean.numpy(), saved.curvature.blocks[0].eigenvalues.reshape(-1).numpy()
    loss = float(refit.loss)
    i, j = 2, 1
    prior, temperature = PRIOR_GRID[i], TEMPERATURE_GRID[j]
    precision = ggn / temperature + prior
    expected = -loss / temperature - 0.5 * (
        np.log(precision).sum() - mean.size * np.log(prior) + prior * (mean**2).sum()
    )
    marglik = run.meta["marglik"]
    assert marglik["log_marglik"][i][j] == pytest.approx(expected, rel=1e-9)
    assert marglik["grid_optimum"]["log_marglik"] == pytest.approx(np.max(marglik["log_marglik"]))
    assert marglik["optimized_prior_precision_at_chosen_temperature"] > 0


def test_artifacts_and_meta_fields(run):
    names = sorted(p.name for p in run.laplace_dir.iterdir())
    artifacts = [
        "laplace_state.pt",
        "laplace_config.yaml",
        "posterior_meta.json",
        "val_nll_grid.png",
    ]
    assert names == sorted([*artifacts, ".reuse"])
    reuse = run.laplace_dir / ".reuse"
    assert sorted(p.name for p in reuse.iterdir()) == sorted(artifacts)
    for name in artifacts:  # hard links: no second copy on disk
        assert (reuse / name).stat().st_ino == (run.laplace_dir / name).stat().st_ino
    meta = read_json(run.laplace_dir / "posterior_meta.json")
    for key in (
        "prior_precision",
        "temperature",
        "grid",
        "n_params",
        "n_data",
        "source_checkpoint",
        "source_checkpoint_md5",
        "laplace_torch_version",
        "backend",
        "fit_time_s",
        "posterior_variance",
        "effective_observations",
        "subsampled",
        "marglik",
    ):
        assert key in meta, key
    assert meta["backend"] == "AsdlGGN"
    assert meta["laplace_torch_version"].startswith("0.3")
    assert meta["subsampled"] is True
    assert meta["effective_observations"] == pytest.approx(meta["n_data"] / meta["temperature"])
    assert meta["prior_precision"] in PRIOR_GRID and meta["temperature"] in TEMPERATURE_GRID
    config = yaml.safe_load((run.laplace_dir / "laplace_config.yaml").read_text())
    assert config["chosen_temperature"] == meta["temperature"]
    assert config["backend"] == "AsdlGGN"
    # every figure a reader of the meta (the ablation summary) takes is in a real meta
    summary = meta_summary(read_meta(run.laplace_dir))
    assert None not in summary.values(), summary
    assert (summary["target_layer"], summary["approx"]) == ("final_conv", "diagonal")
    # the head's weights the posterior covers, in laplace-torch's words
    assert meta["subset_of_weights"] == config["subset_of_weights"] == "last_layer"
    assert meta["posterior"]["subset"] == "last_layer"
    assert meta["hessian_structure"] == config["hessian_structure"] == "diag"
    state = torch.load(run.laplace_dir / "laplace_state.pt", weights_only=True)
    assert state["temperature"] == meta["temperature"]
    assert state["prior_precision"] == meta["prior_precision"]
    assert (state["target_layer"], state["approx"]) == ("final_conv", "diagonal")
    assert state["head_model_args"] == {"channels_in": 3, "hidden_channels": 16}


class _RecordingTracker:
    def __init__(self):
        self.calls = []

    def log(self, metrics, step=None):
        self.calls.append(("log", dict(metrics), step))

    def log_table(self, key, frame):
        self.calls.append(("log_table", key, len(frame)))

    def summary(self, values):
        self.calls.append(("summary", dict(values)))

    def log_image(self, key, path):
        self.calls.append(("log_image", key, path))

    def log_artifact(self, path, name, artifact_type, aliases=None):
        self.calls.append(("artifact", name, artifact_type))


def test_skip_refit_on_force_and_on_new_checkpoint(run, tmp_path):
    out = tmp_path / "out"
    args = (run.train_h5, run.val_h5, out)
    at_800 = laplace_settings(PRIOR_GRID, (1.0, 100.0), max_pixels_fit=800)
    at_900 = replace(at_800, max_pixels_fit=900)
    best = save_best(run.head, tmp_path / "best.pt")
    tracker = _RecordingTracker()
    first = fit_laplace(best, *args, at_800, tracker=tracker)
    grid_logs = [c for c in tracker.calls if c[0] == "log"]
    assert len(grid_logs) == len(PRIOR_GRID) * 2  # one per (prior, temperature) pair
    assert {"laplace/val_nll", "laplace/prior_precision", "laplace/temperature"} <= set(
        grid_logs[0][1]
    )
    assert [c[0] for c in tracker.calls[-4:]] == ["log_table", "summary", "log_image", "artifact"]
    state = out / "laplace_state.pt"
    stamp = state.stat().st_mtime_ns
    assert fit_laplace(best, *args, at_800) == first
    assert state.stat().st_mtime_ns == stamp  # skipped
    fit_laplace(best, *args, at_800, force=True)
    assert state.stat().st_mtime_ns != stamp
    stamp = state.stat().st_mtime_ns
    fit_laplace(best, *args, at_900)  # settings changed -> refit
    assert state.stat().st_mtime_ns != stamp
    stamp = state.stat().st_mtime_ns
    torch.manual_seed(5)
    save_best(NoImageHead(), best)  # a new best.pt (MD5 differs) -> refit
    refit = fit_laplace(best, *args, at_900)
    assert state.stat().st_mtime_ns != stamp
    assert refit["source_checkpoint_md5"] != first["source_checkpoint_md5"]


def test_edge_report_flags_edges_and_flat_axes():
    nll = np.array([[3.0, 2.0, 2.5], [1.0, 1.5, 2.0]])  # optimum (1, 0): both at an edge
    report = edge_report(nll, (1, 0), [0.1, 1.0], [1.0, 10.0, 100.0])
    assert report["prior_precision_at_edge"] and report["temperature_at_edge"]
    assert any("upper edge of laplace.prior_precision_grid" in w for w in report["warnings"])
    assert any("lower edge of laplace.temperature_grid" in w for w in report["warnings"])
    flat = edge_report(np.ones((3, 1)), (0, 0), [1.0, 2.0, 3.0], [1.0])
    assert not flat["temperature_at_edge"]
    assert any("does not change" in w for w in flat["warnings"])
    inner = edge_report(np.array([[2.0], [1.0], [3.0]]), (1, 0), [1.0, 2.0, 3.0], [1.0])
    assert inner["warnings"] == [] and not inner["prior_precision_at_edge"]


def test_clear_errors(run, tmp_path):
    settings = laplace_settings(PRIOR_GRID, TEMPERATURE_GRID)
    args = (run.train_h5, run.val_h5, tmp_path / "o")
    with pytest.raises(LaplaceHeadError, match="best.pt|does not exist"):
        fit_laplace(tmp_path / "missing" / "best.pt", *args, settings)
    with pytest.raises(LaplaceFitError, match="final_conv"):
        fit_laplace(run.best, *args, replace(settings, target_layer="trunk"))
    with pytest.raises(LaplaceFitError, match="positive"):
        fit_laplace(run.best, *args, laplace_settings((0.0,), (1.0,)))
    with pytest.raises(
        LaplaceFitError, match=r"trained with training.logit_clip=20.0.*logit_clip=8"
    ):
        fit_laplace(run.best, *args, replace(settings, logit_clip=8.0))
    empty = make_synthetic_h5(tmp_path / "empty.h5", 0, size=32)
    with pytest.raises(LaplaceFitError, match="empty"):
        fit_laplace(run.best, empty, *args[1:], settings)


def _python(code: str) -> subprocess.CompletedProcess:
    """``code`` run by this Python in a fresh process (no PYTHONWARNINGS from outside); it must
    exit 0."""
    env = {**os.environ, "PYTHONWARNINGS": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_import_filters_only_the_asdl_jit_warning():
    code = (
        "import warnings; warnings.simplefilter('error', FutureWarning)\n"
        "from laplace_head.bayes.laplace_torch import import_laplace; import_laplace()\n"
    )
    result = _python(code)
    assert "FutureWarning" not in result.stderr


def test_a_fit_raises_no_jit_deprecation_warning(tmp_path):
    """The first GGN product of a fresh process loads torch's forward-AD decompositions, which
    call torch.jit.script: the fit keeps that FutureWarning out of the rule's log (here: an
    error if it escaped)."""
    code = (
        "import sys, warnings, pathlib; warnings.simplefilter('error', FutureWarning)\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from helpers.laplace_fixtures import make_fitted_run\n"
        f"make_fitted_run(pathlib.Path({str(tmp_path)!r}), approx='full')\n"
    )
    result = _python(code)
    assert "jit.script" not in result.stderr


def test_import_drops_only_the_absent_backend_notices_from_the_log():
    """A rule's log (root logger at INFO) gets no "... backend not available ... pip install"
    lines from laplace-torch's import, and the root logger keeps logging INFO afterwards."""
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
        "from laplace_head.bayes.laplace_torch import import_laplace; import_laplace()\n"
        "logging.info('Asdfghjkl backend not available, said by us after the import')\n"
    )
    result = _python(code)
    lines = [line for line in result.stdout.splitlines() if "not available" in line]
    assert lines == ["INFO:root:Asdfghjkl backend not available, said by us after the import"]
    assert "pip install" not in result.stdout + result.stderr


def test_outputs_deleted_by_snakemake_are_restored_without_refitting(run, tmp_path, monkeypatch):
    """Snakemake deletes a job's declared outputs before re-running it: with best.pt, the packed
    splits and the settings unchanged, the fit is restored from .reuse/, not redone."""
    import laplace_head.bayes.fit as fit_module

    out = tmp_path / "snakemake_out"
    settings = laplace_settings(PRIOR_GRID, (1.0, 100.0), max_pixels_fit=800)
    first = fit_laplace(run.best, run.train_h5, run.val_h5, out, settings)
    before = {name: (out / name).read_bytes() for name in fit_module.ARTIFACTS}
    for name in fit_module.ARTIFACTS:
        (out / name).unlink()

    def no_refit(*args, **kwargs):
        raise AssertionError("refitted although nothing changed")

    monkeypatch.setattr(fit_module, "make_laplace", no_refit)
    assert fit_laplace(run.best, run.train_h5, run.val_h5, out, settings) == first
    assert {name: (out / name).read_bytes() for name in fit_module.ARTIFACTS} == before
    # a changed input is never served from the reuse copy
    with pytest.raises(AssertionError, match="refitted"):
        fit_laplace(run.best, run.train_h5, run.val_h5, out, replace(settings, seed=1))
    with pytest.raises(AssertionError, match="refitted"):
        fit_laplace(run.best, run.train_h5, run.val_h5, out, settings, force=True)


def test_settings_defaults_are_the_schema_defaults():
    from laplace_head.config.loader import fill_defaults, load_schema

    defaults = fill_defaults({}, load_schema())
    settings = LaplaceSettings.from_defaults(seed=3)
    assert settings.temperature_grid == tuple(defaults["laplace"]["temperature_grid"])
    assert settings.prior_precision_grid == tuple(defaults["laplace"]["prior_precision_grid"])
    assert settings.max_pixels_fit == defaults["laplace"]["max_pixels_fit"]
    assert settings.logit_clip == defaults["training"]["logit_clip"]
    assert settings.seed == 3 and settings.variant == LAST_LAYER_DIAGONAL


def test_probit_nll_sums_equal_the_bce_of_the_tempered_probit_logits():
    """The tuning grid's summed NLL (rearranged into two buffers) equals the plain BCE of
    probit_logits(*tempered_moments(z, v, tau)) summed over pixels, to 1e-13 relative, with
    logits up to +-1000 (where a naive softplus overflows) and several taus and pairs."""
    generator = torch.Generator().manual_seed(4)
    n = 3000
    z = torch.randn(n, generator=generator, dtype=torch.float64) * 8
    z[:20] = torch.linspace(-1000, 1000, 20, dtype=torch.float64)
    variance = torch.rand(3, n, generator=generator, dtype=torch.float64) * 5
    variance[0] = 0.0
    labels = (torch.rand(n, generator=generator) > 0.4).double()
    taus = torch.tensor([0.25, 1.0, 1.19, 8.0], dtype=torch.float64)[:, None, None]
    got = probit_nll_sums(z, variance, labels, taus)
    logits = probit_logits(*tempered_moments(z, variance, taus))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels.expand_as(logits), reduction="none"
    ).sum(-1)
    assert got.shape == (4, 3)
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=0.0)
