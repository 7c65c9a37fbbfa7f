"""The head variants (``head.variant``, ``heads``): what each head sees, in one place.

=========  ===========================================================  ==============
variant    inputs on the 256 grid, channel order                        ``channels_in``
=========  ===========================================================  ==============
no_image   ``[logits_256, pos_map, neg_map]`` (the seed's head)          3
image      ``[logits_256, pos_map, neg_map, R, G, B]``                    6
=========  ===========================================================  ==============

Both are the same fully convolutional network (:class:`~laplace_head.model.head.NoImageHead`,
two 3x3 convs and a 1x1 conv, a 5x5 receptive field); only ``channels_in`` differs, so the
all-layer posterior's per-pixel 5x5 patch model (:mod:`laplace_head.bayes.jacobian`) is exact
for either. The image channels are the image resized to the 256 grid by the rule the logits
follow (:func:`laplace_head.dataset.images.resize_image_grid`) and normalised
(:func:`laplace_head.cache.split_h5.assemble_inputs`).

The variant's value is its folder name under ``training_data/``, ``checkpoints/`` and
``laplace/`` (:class:`~laplace_head.layout.ProjectLayout`). This module imports nothing heavy:
the layout, the settings and the config loader use it.
"""

from __future__ import annotations

from enum import Enum

#: Channels every head reads: the base logits and the two prompt maps.
BASE_CHANNELS = 3
#: Channels the image adds: RGB at the 256 grid.
IMAGE_CHANNELS = 3


class HeadVariant(str, Enum):
    """A head variant (``head.variant``, the entries of ``heads``)."""

    NO_IMAGE = "no_image"
    IMAGE = "image"

    @property
    def needs_image(self) -> bool:
        """True when the head reads the image at the 256 grid."""
        return self is HeadVariant.IMAGE

    @property
    def channels_in(self) -> int:
        """The head's input channels (its ``channels_in`` constructor argument)."""
        return BASE_CHANNELS + (IMAGE_CHANNELS if self.needs_image else 0)

    @classmethod
    def parse(cls, value: object, what: str = "head variant") -> HeadVariant:
        """``value`` as a variant; ValueError naming it and the valid names otherwise."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(v.value for v in cls)
            raise ValueError(f"{what} = {value!r} is not one of {valid}") from None

    @classmethod
    def of_channels(cls, channels_in: int) -> HeadVariant:
        """The variant whose head takes ``channels_in`` input channels."""
        for variant in cls:
            if variant.channels_in == channels_in:
                return variant
        valid = ", ".join(f"{v.channels_in} ({v.value})" for v in cls)
        raise ValueError(f"no head variant takes {channels_in} input channels; valid: {valid}")


#: The seed's head: its outputs keep the seed's paths (reports and logs without a head folder).
SEED_HEAD = HeadVariant.NO_IMAGE
