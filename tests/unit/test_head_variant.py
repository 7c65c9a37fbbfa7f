"""HeadVariant: the head variants' names, input channels and image needs, and their settings."""

from __future__ import annotations

import pytest

from laplace_head.config import validate_config
from laplace_head.model.head_variant import (
    BASE_CHANNELS,
    IMAGE_CHANNELS,
    SEED_HEAD,
    HeadVariant,
)
from laplace_head.settings import config_heads, head_params, stage_params


def test_each_variant_names_its_inputs() -> None:
    assert [v.value for v in HeadVariant] == ["no_image", "image"]
    assert SEED_HEAD is HeadVariant.NO_IMAGE
    assert (HeadVariant.NO_IMAGE.channels_in, HeadVariant.NO_IMAGE.needs_image) == (3, False)
    assert (HeadVariant.IMAGE.channels_in, HeadVariant.IMAGE.needs_image) == (6, True)
    assert HeadVariant.IMAGE.channels_in == BASE_CHANNELS + IMAGE_CHANNELS
    for variant in HeadVariant:
        assert HeadVariant.of_channels(variant.channels_in) is variant
        assert HeadVariant.parse(variant.value) is variant


def test_unknown_variants_and_channel_counts_are_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="heads entry = 'rgb' is not one of no_image, image"):
        HeadVariant.parse("rgb", "heads entry")
    with pytest.raises(ValueError, match=r"4 input channels; valid: 3 \(no_image\), 6 \(image\)"):
        HeadVariant.of_channels(4)


def test_stage_5_trains_each_head_with_its_channels_and_the_seed_params_are_unchanged() -> None:
    config = validate_config(
        {"heads": ["no_image", "image"], "head": {"hidden_channels": 8}}, check_paths=False
    )
    assert config_heads(config) == ["no_image", "image"]
    # the seed head's stage-5 params are the seed's head section key for key (no rerun)
    seed_head = {k: v for k, v in config["head"].items() if k != "variant"}
    assert stage_params(config)["train_head"]["head"] == seed_head
    assert head_params(config, "image") == {"channels_in": 6, "hidden_channels": 8}
    assert stage_params(config, head="image")["train_head"]["head"]["channels_in"] == 6
    other = {k: v for k, v in stage_params(config, head="image").items() if k != "train_head"}
    assert other == {k: v for k, v in stage_params(config).items() if k != "train_head"}
    with pytest.raises(ValueError, match="head = 'depth' is not one of"):
        head_params(config, "depth")
