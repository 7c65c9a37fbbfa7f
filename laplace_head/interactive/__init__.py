"""Interactive segmentation with the Laplace head: a click-by-click predictor, a click session,
click simulation (RITM clickers, suggestion policies) and the stage-8 shard runner.

- :mod:`~laplace_head.interactive.predictor`: :class:`InteractivePredictor` (base segmenter +
  head + quadrature uncertainty, SamPredictor-shaped ``predict``, suggestions) and
  :func:`~laplace_head.interactive.predictor.suggest_for_inputs`.
- :mod:`~laplace_head.interactive.session`: :class:`ClickSession` (click history and undo).
- :mod:`~laplace_head.interactive.clicks`: first / oracle clicks, the policy registry
  ``POLICIES``, :class:`~laplace_head.interactive.clicks.Suggestion`, grid <-> image
  coordinates.
- :mod:`~laplace_head.interactive.simulate`: :func:`simulate_clicks` for one image and policy.
- :mod:`~laplace_head.interactive.records`: the stage-8 JSONL (written by
  :mod:`~laplace_head.interactive.shard`, read by the report).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClickSession", "InteractivePredictor", "Suggestion"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the numpy-only click rules does not import torch.
    if name == "InteractivePredictor":
        from laplace_head.interactive.predictor import InteractivePredictor

        return InteractivePredictor
    if name == "ClickSession":
        from laplace_head.interactive.session import ClickSession

        return ClickSession
    if name == "Suggestion":
        from laplace_head.interactive.clicks import Suggestion

        return Suggestion
    raise AttributeError(f"module 'laplace_head.interactive' has no attribute {name!r}")
