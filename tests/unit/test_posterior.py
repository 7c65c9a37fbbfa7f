"""The Posterior: probit predictive, samples, entropies / BALD (quadrature by default), loading."""

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
from laplace_head.bayes.predictive import UNCERTAINTY_FIELDS, gaussian_logit_uncertainty
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
    torch.testing.assert_close(maps["bald"], torch.zeros(3))
    torch.testing.assert_close(maps["entropy"], maps["expected_entropy"])
    a = 2.0
    opposite = torch.tensor([[a], [-a]])
    maps = uncertainty_from_samples(opposite)
    p = 1 / (1 + math.exp(-a))
    h = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert float(maps["entropy"][0]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(maps["expected_entropy"][0]) == pytest.approx(h, rel=1e-6)
    assert float(maps["bald"][0]) == pytest.approx(math.log(2) - h, rel=1e-5)
    confident = uncertainty_from_samples(torch.tensor([[40.0], [45.0]]))
    assert float(confident["entropy"][0]) > 0  # float64, no underflow to 0
    assert float(confident["bald"][0]) >= 0


def test_uncertainty_maps_shapes_and_ranges():
    posterior = _posterior(variance_scale=0.5)
    maps = posterior.uncertainty_maps(_inputs(2), n_samples=16)
    assert set(maps) == {"map_logits", "map_probability", "logit_variance", *UNCERTAINTY_FIELDS}
    for name in ("entropy", "expected_entropy", "bald"):
        assert maps[name].shape == (2, SIZE, SIZE)
        assert float(maps[name].min()) >= 0 and float(maps[name].max()) <= math.log(2) + 1e-6
    assert torch.all(maps["entropy"] + 1e-6 >= maps["expected_entropy"])


def test_uncertainty_maps_are_quadrature_unless_sampling_is_asked_for():
    """One route: the default is the deterministic quadrature of the moments; only n_samples or
    weight_samples switch to sampling, and the two agree."""
    posterior = _posterior(variance_scale=0.5)
    inputs = _inputs(1)
    maps = posterior.uncertainty_maps(inputs)
    map_logits, variance = posterior.logit_moments(inputs)
    expected = gaussian_logit_uncertainty(map_logits, variance)
    for name in UNCERTAINTY_FIELDS:
        torch.testing.assert_close(maps[name], expected[name], rtol=0, atol=0)
    torch.testing.assert_close(maps["map_logits"], map_logits, rtol=0, atol=0)
    torch.testing.assert_close(maps["map_probability"], torch.sigmoid(map_logits))
    reused = posterior.uncertainty_maps(inputs, moments=(map_logits, variance))
    torch.testing.assert_close(reused["bald"], maps["bald"], rtol=0, atol=0)
    generator = torch.Generator().manual_seed(0)
    sampled = posterior.uncertainty_maps(inputs, n_samples=2000, generator=generator)
    assert not torch.equal(sampled["bald"], maps["bald"])
    assert float((sampled["bald"] - maps["bald"]).abs().mean()) < 0.01
    prob_error = (sampled["predictive_probability"] - maps["predictive_probability"]).abs()
    assert float(prob_error.max()) < 0.05
    weights = posterior.sample_weights(8, torch.Generator().manual_seed(1))
    again = posterior.uncertainty_maps(inputs, weight_samples=weights)
    torch.testing.assert_close(
        again["bald"], posterior.uncertainty_maps(inputs, weight_samples=weights)["bald"]
    )


def test_as_inputs_cleans_a_copy_and_leaves_the_callers_tensor_alone():
    """The logits channel loses its NaN (-> 0) and is clipped to +-logit_clip in the returned
    tensor only: the caller's float32 tensor (which ``.to`` alone would return as is) keeps
    its values."""
    posterior = _posterior()
    given = torch.from_numpy(_inputs(1).astype(np.float32))
    given[0, 0, 0, 0], given[0, 0, 0, 1], given[0, 0, 0, 2] = float("nan"), 50.0, -float("inf")
    before = given.clone()
    tensor = posterior.as_inputs(given)
    assert torch.equal(given.nan_to_num(1234.0), before.nan_to_num(1234.0))  # untouched
    assert tensor.data_ptr() != given.data_ptr()
    assert tensor[0, 0, 0, :3].tolist() == [0.0, 20.0, -20.0]
    assert torch.equal(tensor[:, 1:], given[:, 1:])
    clipped = before[:, 0].nan_to_num(0.0).clamp(-20.0, 20.0)
    assert torch.equal(tensor[:, 0], clipped)


def test_the_head_pass_keeps_the_modules_features_and_logits_bit_for_bit():
    """The posterior's forward pass (ReLUs in place, the pre-activation overwritten) gives the
    module's own features and logits exactly."""
    posterior = _posterior()
    tensor = posterior.as_inputs(_inputs(2))
    head_pass = posterior.head_pass(tensor)
    assert torch.equal(head_pass.features, posterior.head.features(tensor))
    assert torch.equal(head_pass.logits, posterior.head(tensor)[:, 0])
    assert torch.equal(posterior.map_logits(tensor), head_pass.logits)


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


def test_bad_prompt_maps():
    posterior = _posterior()
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


def _tampered(fitted, tmp_path, edit):
    """A copy of the fit's folder (outside a project) with ``edit(state)`` applied."""
    import shutil

    folder = tmp_path / "tampered"
    shutil.copytree(fitted.laplace_dir, folder)
    state = torch.load(folder / "laplace_state.pt", weights_only=True)
    edit(state)
    torch.save(state, folder / "laplace_state.pt")
    return folder


def _set(key, value):
    return lambda state: state.__setitem__(key, value)


def _edit_block(field, fill):
    def edit(state):
        block = state["curvature"]["blocks"][0]
        block[field] = torch.full_like(block["eigenvalues"], fill)

    return edit


def _nan_rotation(state):
    block = state["curvature"]["blocks"][0]
    n_in = block["eigenvalues"].shape[1]
    block["rot_in"] = torch.full((n_in, n_in), math.nan, dtype=torch.float64)


def _shift_head(state):
    state["head_state"]["final_conv.bias"] = state["head_state"]["final_conv.bias"] + 0.5


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set("prior_precision", math.nan), "prior_precision is nan"),
        (_set("prior_precision", -1.0), "prior_precision is -1.0"),
        (_set("temperature", 0.0), "temperature is 0.0"),
        (_set("logit_clip", math.nan), "logit_clip is nan"),
        (_set("logit_clip", "20"), "logit_clip is a str"),
        (_edit_block("eigenvalues", math.nan), "eigenvalues of block 'final_conv' holds NaN"),
        (_edit_block("eigenvalues", -1.0), "negative eigenvalues"),
        (_nan_rotation, "rot_in of block 'final_conv' holds NaN"),
        (lambda state: state["curvature"].pop("blocks"), "not a fitted curvature"),
        (lambda state: state["mean"].add_(0.5), "differ from the posterior mean"),
        (_shift_head, "differ from the posterior mean"),
        (lambda state: state.__setitem__("mean", state["mean"][:-1]), "mean has 16 entries"),
        (
            lambda state: state["head_state"].__setitem__("final_conv.bias", torch.zeros(2)),
            "its head does not load",
        ),
        (_set("head_state", []), "head_state is not"),
    ],
)
def test_a_tampered_posterior_state_is_refused_naming_the_file(fitted, tmp_path, edit, match):
    folder = _tampered(fitted, tmp_path, edit)
    with pytest.raises(PosteriorLoadError, match=match) as error:
        load_posterior(folder)
    assert str(folder / "laplace_state.pt") in str(error.value)
    assert "fit_laplace" in str(error.value)


def test_an_unreadable_posterior_meta_is_refused_naming_the_file(fitted, tmp_path):
    folder = _tampered(fitted, tmp_path, lambda state: None)
    (folder / "posterior_meta.json").write_text("{not json")
    with pytest.raises(PosteriorLoadError, match="posterior_meta.json"):
        load_posterior(folder)


def test_a_posterior_fitted_on_another_best_pt_is_refused_in_its_project(fitted, tmp_path):
    import shutil

    from helpers.laplace_fixtures import save_best

    from laplace_head.layout import ProjectLayout

    root = tmp_path / "project"
    shutil.copytree(fitted.root, root)
    layout = ProjectLayout(root, "t1")
    load_posterior(layout.laplace_dir)  # the same best.pt
    save_best(fitted.head, layout.best_checkpoint, epoch=9)  # retrained since the fit
    with pytest.raises(PosteriorLoadError, match="fitted on a best.pt with MD5") as error:
        load_posterior(layout.laplace_dir)
    assert str(layout.best_checkpoint) in str(error.value)
    layout.best_checkpoint.unlink()  # only the posterior folder: it loads on its own
    assert load_posterior(layout.laplace_dir).temperature == fitted.meta["temperature"]


@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_a_cuda_device_on_a_machine_without_it_is_not_a_refit(fitted, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PosteriorLoadError, match="not available on this machine") as error:
        load_posterior(fitted.laplace_dir, device=device)
    assert "device='cpu'" in str(error.value) and "fit_laplace" not in str(error.value)


def test_stack_inputs_with_the_image_builds_the_image_heads_channels_as_training_does():
    from laplace_head.cache.split_h5 import assemble_inputs

    rng = np.random.default_rng(0)
    logits, pos, neg = (rng.normal(size=(2, 8, 8)).astype(np.float32) for _ in range(3))
    image = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    stacked = stack_inputs(logits, pos, neg, image)
    assert stacked.shape == (2, 6, 8, 8)
    np.testing.assert_array_equal(stacked, assemble_inputs(logits, pos, neg, np.inf, image))
    single = stack_inputs(logits[0], pos[0], neg[0], image[0])
    np.testing.assert_array_equal(single, stacked[0])
    assert not np.allclose(stacked[:, 3:], image)  # normalised, not raw
    with pytest.raises(UncertaintyInputError, match=r"image_256 must be \(2, 3, 8, 8\) uint8"):
        stack_inputs(logits, pos, neg, image.astype(np.float32))
