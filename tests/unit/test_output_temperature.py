"""laplace.output_temperature: a temperature on top of the Laplace predictive, fitted on val."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers.laplace_fixtures import (
    PRIOR_GRID,
    TEMPERATURE_GRID,
    laplace_settings,
    make_fitted_run,
)

from laplace_head.bayes.fit import fit_laplace
from laplace_head.bayes.posterior import load_posterior
from laplace_head.bayes.posterior_io import read_posterior_files
from laplace_head.bayes.predictive import (
    gaussian_logit_uncertainty,
    probit_logits,
    tempered_moments,
)
from laplace_head.bayes.tuning import OUTPUT_TEMPERATURE_GRID
from laplace_head.cache.split_h5 import iter_split_batches
from laplace_head.interactive.clicks import ClickState, expected_iou, iou_lookahead_policy


def test_tempered_moments_scales_the_gaussian_logit():
    m, v = torch.tensor([2.0, -4.0]), torch.tensor([1.0, 9.0])
    tm, tv = tempered_moments(m, v, 2.0)
    torch.testing.assert_close(tm, torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(tv, torch.tensor([0.25, 2.25]))
    assert tempered_moments(m, v, 1.0) == (m, v)  # tau = 1: the inputs themselves
    many = tempered_moments(m, v, torch.tensor([1.0, 2.0])[:, None])
    assert many[0].shape == (2, 2) and float(many[0][1, 0]) == 1.0


def test_grid_holds_one_and_spans_a_factor_32():
    grid = np.asarray(OUTPUT_TEMPERATURE_GRID)
    assert 1.0 in OUTPUT_TEMPERATURE_GRID
    assert grid[0] == 0.25 and grid[-1] == 8.0
    assert np.all(np.diff(np.log(grid)) == pytest.approx(math.log(2) / 24))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_fitted_run(tmp_path_factory.mktemp("laplace_fit"))


@pytest.fixture(scope="module")
def tempered(run, tmp_path_factory):
    """The fixture run refitted with and without the output temperature."""
    out = tmp_path_factory.mktemp("tau")
    settings = laplace_settings(
        PRIOR_GRID, TEMPERATURE_GRID, max_pixels_fit=1500, output_temperature=True
    )
    meta = fit_laplace(run.best, run.train_h5, run.val_h5, out / "tau", settings, run_id="t1")
    plain = fit_laplace(
        run.best,
        run.train_h5,
        run.val_h5,
        out / "plain",
        replace(settings, output_temperature=False),
    )
    return meta, plain, out / "tau"


def test_fit_chooses_tau_on_val_and_never_does_worse(tempered):
    meta, plain, _ = tempered
    assert plain["output_temperature"] == 1.0
    by_tau = np.asarray(meta["grid"]["best_output_temperature"])
    assert by_tau.shape == (len(PRIOR_GRID), len(TEMPERATURE_GRID))
    assert meta["output_temperature"] == by_tau[tuple(meta["grid"]["chosen_index"])]
    assert meta["output_temperature"] in OUTPUT_TEMPERATURE_GRID
    # tau = 1 is on the grid: the tempered fit's val NLL is never above the plain one's
    assert meta["val_nll"] <= plain["val_nll"] + 1e-12
    # on this fixture the head is overconfident on val: tau moves off 1 and helps
    assert meta["output_temperature"] > 1.5 and meta["val_nll"] < plain["val_nll"] - 1e-3
    # the plain grid equals the tempered grid's tau = 1 slice
    assert np.all(np.asarray(meta["grid"]["val_nll"]) <= np.asarray(plain["grid"]["val_nll"]))
    assert meta["fit_settings"]["output_temperature"] is True


def test_loaded_posterior_applies_tau_to_every_predictive_quantity(run, tempered):
    meta, _, folder = tempered
    posterior = load_posterior(folder)
    tau = posterior.output_temperature
    assert tau == meta["output_temperature"]
    saved, _ = read_posterior_files(folder)
    assert saved.output_temperature == tau
    batch = next(iter_split_batches(run.val_h5, 2, posterior.logit_clip))
    m, v = posterior.logit_moments(batch.inputs)
    torch.testing.assert_close(
        posterior.predictive_logits(batch.inputs), probit_logits(m / tau, v / tau**2)
    )
    maps = posterior.uncertainty_maps(batch.inputs)
    ref = gaussian_logit_uncertainty(m / tau, v / tau**2)
    for name in ("predictive_probability", "entropy", "bald"):
        torch.testing.assert_close(maps[name], ref[name])
    torch.testing.assert_close(maps["map_logits"], m)  # the MAP head is its own
    samples = posterior.sample_logits(batch.inputs, 4, torch.Generator().manual_seed(0))
    drawn = posterior.uncertainty_maps(
        batch.inputs, weight_samples=posterior.sample_weights(4, torch.Generator().manual_seed(0))
    )
    assert drawn["predictive_probability"].shape == samples.shape[1:]
    torch.testing.assert_close(
        drawn["predictive_probability"], torch.sigmoid(samples / tau).mean(0)
    )


def test_val_nll_reported_is_the_tempered_predictive_nll(run, tempered):
    """Recompute the chosen val NLL from the loaded posterior on every val pixel."""
    meta, _, folder = tempered
    posterior = load_posterior(folder)
    total, n = 0.0, 0
    for batch in iter_split_batches(run.val_h5, 2, posterior.logit_clip):
        z = posterior.predictive_logits(batch.inputs).double()
        y = batch.gt_mask.double()
        total += float(torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum"))
        n += y.numel()
    assert meta["val_nll"] == pytest.approx(total / n, rel=1e-5)


def test_posterior_without_tau_in_its_state_loads_with_tau_one(run):
    state = torch.load(run.laplace_dir / "laplace_state.pt", weights_only=False)
    assert "output_temperature" in state
    del state["output_temperature"]
    torch.save(state, run.laplace_dir / "laplace_state.pt")
    try:
        saved, _ = read_posterior_files(run.laplace_dir)
        assert saved.output_temperature == 1.0
    finally:
        state["output_temperature"] = 1.0
        torch.save(state, run.laplace_dir / "laplace_state.pt")


def _square(k: float) -> np.ndarray:
    logits = np.full((16, 16), -k)
    logits[4:12, 4:12] = k
    return logits


def test_iou_lookahead_integrates_the_tempered_logit():
    """Hand-made look-ahead: the first candidate's head is sure and certain (|z| = 3, no
    variance), the others' surer but uncertain (|z| = 12, var 144). Their expected IoUs swap
    order between tau = 1 and tau = 4; the rule follows the state's tau."""
    sure, unsure = (_square(3.0), np.zeros((16, 16))), (_square(12.0), np.full((16, 16), 144.0))
    for tau, first_wins in ((1.0, True), (4.0, False)):
        ious = [expected_iou(*tempered_moments(*pair, tau)) for pair in (sure, unsure)]
        assert bool(ious[0] > ious[1]) is first_wins
    bald = np.zeros((16, 16))
    bald[2, 2], bald[13, 13], bald[2, 13] = 1.0, 0.9, 0.8  # three separate peaks
    probability = 1 / (1 + np.exp(-_square(3.0)))

    def state(tau: float) -> ClickState:
        order: list = []

        def look(requests, name):
            out = []
            for cell, _label in requests:
                if cell not in order:
                    order.append(cell)
                pair = sure if order.index(cell) == 0 else unsure
                out.append(pair[0] if name == "map_logits" else pair[1])
            return out

        chosen = ClickState(
            map_probability=probability,
            entropy=bald,
            bald=bald,
            predictive_probability=probability,
            lookahead_fields=look,
            output_temperature=tau,
        )
        return iou_lookahead_policy(chosen, np.random.default_rng(0)), order

    cell, order = state(1.0)
    assert len(order) >= 2 and cell == order[0]
    cell, order = state(4.0)
    assert cell == order[1]
