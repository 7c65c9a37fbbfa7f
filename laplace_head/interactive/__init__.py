"""Interactive segmentation with the Laplace head: a click-by-click predictor, click
simulation (RITM clickers, suggestion policies) and the stage-8 shard runner.

- :mod:`~laplace_head.interactive.predictor`: :class:`InteractivePredictor` (base segmenter +
  head + quadrature uncertainty, click history, suggestions).
- :mod:`~laplace_head.interactive.clicks`: first / oracle clicks, the policy registry
  ``POLICIES``, grid <-> image coordinates.
- :mod:`~laplace_head.interactive.simulate`: :func:`simulate_clicks` for one image and policy.
"""
