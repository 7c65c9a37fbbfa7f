"""Facts every stage shares, each named once."""

from __future__ import annotations

# The working grid: base logits, prompt maps, ground truth and head outputs are all
# GRID_SIZE x GRID_SIZE (the "256" in logits_256).
GRID_SIZE = 256
