"""The Posterior: probit predictive, samples, entropies / BALD, prompt scores, loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.laplace_fixtures import last_layer_posterior, make_fitted_run

import laplace_head
from laplace_head.bayes.posterior import (
    Posterior,
    PosteriorLoadError,
    UncertaintyInputError,
    load_posterior,
    stack_inputs,
    uncertainty_from_samples,
)
from laplace_head.bayes.prompt_scoring import gaussian_neighbourhood_mean
from laplace_head.model.head import NoImageHead

SIZE = 24


def _posterior(variance_scale: float = 0.05, seed: int = 0) -> Posterior:
    torch.manual_seed(seed)
    head = NoImageHead().eval().requires_grad_(False)
    variance = variance_scale * (1 + torch.rand(head.final_conv.in_channels + 1))
    return last_layer_posterior(head, variance, logit_clip=20.0)


def _inputs(batch: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 6, size=(batch, SIZE, SIZE))
    pos, neg = rng.uniform(0, 1, size=(2, batch, SIZE, SIZE))
    return stack_inputs(logits, pos, neg).astype(np.float16)


def test_map_probability_is_the_head_output_and_logits_are_clipped():
    posterior = _posterior()
    inputs = _inputs()
    inputs[:, 0] *= 10  # beyond the clip
    clipped = torch.from_numpy(inputs.astype(np.float32))
    clipped[:, 0] = clipped[:, 0].clamp(-20, 20)
    expected = torch.sigmoid(posterior.head(clipped))[:, 0]
    torch.testing.assert_close(posterior.map_probability(inputs), expected, atol=1e-6, rtol=0)


def test_probit_predictive_uses_the_sampled_logit_variance():
    """Closed-form var(z) matches the variance of sampled logits; p is the probit formula."""
    posterior = _posterior()
    inputs = _inputs(batch=1)
    map_logits, variance = posterior.logit_moments(inputs)
    generator = torch.Generator().manual_seed(0)
    samples = posterior.sample_logits(inputs, n_samples=4000, generator=generator)
    assert samples.shape == (4000, 1, SIZE, SIZE)
    torch.testing.assert_close(samples.var(0), variance, rtol=0.12, atol=1e-6)
    torch.testing.assert_close(samples.mean(0), map_logits, rtol=0, atol=0.05)
    expected = torch.sigmoid(map_logits / torch.sqrt(1 + math.pi * variance / 8))
    torch.testing.assert_close(posterior.predictive_probability(inputs), expected)
    # the probit predictive is less confident than the MAP, never on the other side of 0.5
    p_map = posterior.map_probability(inputs)
    p_pred = posterior.predictive_probability(inputs)
    assert torch.all((p_pred - 0.5).abs() <= (p_map - 0.5).abs() + 1e-7)
    assert torch.all((p_pred > 0.5) == (p_map > 0.5))


def test_weight_samples_are_reusable_and_seeded():
    posterior = _posterior()
    inputs_a, inputs_b = _inputs(1, seed=1), _inputs(1, seed=2)
    weights = posterior.sample_weights(8, torch.Generator().manual_seed(3))
    again = posterior.sample_weights(8, torch.Generator().manual_seed(3))
    torch.testing.assert_close(weights, again)
    logits_a = posterior.sample_logits(inputs_a, weight_samples=weights)
    torch.testing.assert_close(logits_a, posterior.sample_logits(inputs_a, weight_samples=weights))
    both = posterior.sample_logits(np.concatenate([inputs_a, inputs_b]), weight_samples=weights)
    torch.testing.assert_close(both[:, :1], logits_a)
    with pytest.raises(UncertaintyInputError, match="weight_samples"):
        posterior.sample_logits(inputs_a, weight_samples=weights[:, :5])


def test_entropy_decomposition_from_samples():
    identical = torch.full((5, 3), 1.3)
    maps = uncertainty_from_samples(identical)
    torch.testing.assert_close(maps["mutual_information"], torch.zeros(3))
    torch.testing.assert_close(maps["predictive_entropy"], maps["expected_entropy"])
    a = 2.0
    opposite = torch.tensor([[a], [-a]])
    maps = uncertainty_from_samples(opposite)
    p = 1 / (1 + math.exp(-a))
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert float(maps["predictive_entropy"][0]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(maps["expected_entropy"][0]) == pytest.approx(h, rel=1e-6)
    assert float(maps["mutual_information"][0]) == pytest.approx(math.log(2) - h, rel=1e-5)
    confident = uncertainty_from_samples(torch.tensor([[40.0], [45.0]]))
    assert float(confident["predictive_entropy"][0]) > 0  # float64, no underflow to 0
    assert float(confident["mutual_information"][0]) >= 0


def test_uncertainty_maps_shapes_and_ranges():
    posterior = _posterior(variance_scale=0.5)
    maps = posterior.uncertainty_maps(_inputs(2), n_samples=16)
    for name in ("predictive_entropy", "expected_entropy", "mutual_information"):
        assert maps[name].shape == (2, SIZE, SIZE)
        assert float(maps[name].min()) >= 0 and float(maps[name].max()) <= math.log(2) + 1e-6
    assert torch.all(maps["predictive_entropy"] + 1e-6 >= maps["expected_entropy"])


def test_gaussian_neighbourhood_mean_is_a_normalised_local_average():
    flat = gaussian_neighbourhood_mean(torch.full((20, 30), 0.7), sigma=3.0)
    torch.testing.assert_close(flat, torch.full((20, 30), 0.7))  # border-normalised
    spike = torch.zeros(20, 30)
    spike[5, 20] = 1.0
    smoothed = gaussian_neighbourhood_mean(spike, sigma=2.0)
    assert tuple(np.unravel_index(int(smoothed.argmax()), smoothed.shape)) == (5, 20)


def test_score_prompts_ranks_by_neighbourhood_bald_with_predicted_labels(monkeypatch):
    posterior = _posterior()
    bald = torch.zeros(1, SIZE, SIZE)
    bald[0, 4:7, 16:19] = 0.5  # an uncertain blob around (x=17, y=5)
    bald[0, 18, 4] = 0.2  # a weaker spot at (x=4, y=18)
    probability = torch.full((1, SIZE, SIZE), 0.2)
    probability[0, :, 12:] = 0.9  # the right half is predicted foreground

    def fake_maps(self, inputs, n_samples=32, generator=None, weight_samples=None):
        return {"mutual_information": bald, "predictive_probability": probability}

    monkeypatch.setattr(Posterior, "uncertainty_maps", fake_maps)
    candidates = [[4, 18], [17, 5], [1, 1]]
    ranked = posterior.score_prompts(_inputs(1), candidates, sigma=1.5)
    assert [(s.x, s.y) for s in ranked] == [(17, 5), (4, 18), (1, 1)]
    assert [s.rank for s in ranked] == [0, 1, 2]
    assert [s.label for s in ranked] == ["positive", "negative", "negative"]
    assert ranked[0].score > ranked[1].score > ranked[2].score == pytest.approx(0)
    grid = posterior.score_prompts(_inputs(1), sigma=1.5, grid_stride=1, top_k=3)
    assert len(grid) == 3 and grid[0].score >= grid[1].score >= grid[2].score
    assert (grid[0].x, grid[0].y) == (17, 5)  # the blob centre
    for a in grid:  # non-maximum suppression: suggestions at least 2 sigma apart
        for b in grid:
            assert a is b or np.hypot(a.x - b.x, a.y - b.y) >= 3.0
    dense = posterior.score_prompts(_inputs(1), sigma=1.5, grid_stride=1, top_k=3, min_distance=0)
    assert max(np.hypot(a.x - 17, a.y - 5) for a in dense) <= 1.5  # all in the blob
    assert ranked[0].to_dict()["label"] == "positive"


def test_score_prompts_on_a_real_posterior_returns_sorted_points():
    posterior = _posterior(variance_scale=0.5)
    ranked = posterior.score_prompts(_inputs(1)[0], sigma=3, grid_stride=6, n_samples=8)
    assert len(ranked) == (SIZE // 6) ** 2
    scores = [s.score for s in ranked]
    assert scores == sorted(scores, reverse=True)
    for s in ranked:
        assert s.label == ("positive" if s.p_foreground > 0.5 else "negative")


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((2, SIZE, SIZE), np.float32), "shape"),
        (np.zeros((1, 4, SIZE, SIZE), np.float32), "shape"),
        (np.zeros((3, SIZE, SIZE), np.int64), "dtype"),
        (torch.zeros(3, SIZE, SIZE, dtype=torch.int32), "dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(bad, match):
    with pytest.raises(UncertaintyInputError, match=match):
        _posterior().predictive_probability(bad)


def test_bad_prompt_arguments():
    posterior = _posterior()
    with pytest.raises(UncertaintyInputError, match="outside"):
        posterior.score_prompts(_inputs(1), [[SIZE + 3, 2]])
    with pytest.raises(UncertaintyInputError, match="one prompt set"):
        posterior.score_prompts(_inputs(2))
    with pytest.raises(UncertaintyInputError, match=r"\(M, 2\)"):
        posterior.score_prompts(_inputs(1), [1, 2, 3])
    nan_maps = _inputs(1).astype(np.float32)
    nan_maps[0, 1, 0, 0] = np.nan
    with pytest.raises(UncertaintyInputError, match="NaN"):
        posterior.predictive_probability(nan_maps)
    with pytest.raises(UncertaintyInputError, match="share one shape"):
        stack_inputs(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 5)))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return make_fitted_run(tmp_path_factory.mktemp("uncertainty"))


def test_load_posterior_from_every_accepted_path(fitted):
    posterior = laplace_head.load_posterior(fitted.laplace_dir)
    assert posterior.temperature == fitted.meta["temperature"]
    assert posterior.prior_precision == fitted.meta["prior_precision"]
    assert posterior.meta["n_params"] == 17
    for path, run_id in (
        (fitted.laplace_dir / "laplace_state.pt", None),
        (fitted.root / "checkpoints" / "no_image" / "run_t1", None),
        (fitted.root, "t1"),
    ):
        other = load_posterior(path, run_id=run_id)
        torch.testing.assert_close(other.variance, posterior.variance)
    inputs = _inputs(1)
    clipped = torch.from_numpy(inputs.astype(np.float32))
    clipped[:, 0] = clipped[:, 0].clamp(-20, 20)
    head_out = torch.sigmoid(fitted.head(clipped))[:, 0]
    torch.testing.assert_close(posterior.map_probability(inputs), head_out, atol=1e-6, rtol=0)


def test_load_posterior_errors(fitted, tmp_path):
    with pytest.raises(PosteriorLoadError, match="run fit_laplace|fit_laplace"):
        load_posterior(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    torch.save({"laplace_state": {}}, broken / "laplace_state.pt")
    with pytest.raises(PosteriorLoadError, match="lacks"):
        load_posterior(broken)
    (broken / "laplace_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(PosteriorLoadError, match="cannot read"):
        load_posterior(broken)


def test_crafted_head_args_in_the_laplace_state_are_refused(fitted, tmp_path):
    """laplace_state.pt's head_model_args pass the same check as a training checkpoint's."""
    import shutil

    import torch

    from laplace_head.bayes.posterior import PosteriorLoadError, load_posterior
    from laplace_head.training.checkpoint import CheckpointError

    folder = tmp_path / "crafted"
    shutil.copytree(fitted.laplace_dir, folder)
    state = torch.load(folder / "laplace_state.pt", weights_only=False)
    state["head_model_args"] = {"channels_in": 3, "hidden_channels": 10**12}
    torch.save(state, folder / "laplace_state.pt")
    with pytest.raises((CheckpointError, PosteriorLoadError), match="hidden_channels"):
        load_posterior(folder)
