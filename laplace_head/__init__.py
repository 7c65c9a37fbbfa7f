"""Laplace Head: a calibrated, prompt-aware Bayesian refinement head on a frozen SAM."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ClickSession", "InteractivePredictor", "__version__", "load_posterior"]


def __getattr__(name: str):
    # Lazy so that `import laplace_head` stays cheap (no torch / laplace-torch import) for the
    # CPU-only stages 1-2 and the Snakefile.
    if name == "load_posterior":
        from laplace_head.bayes.posterior import load_posterior

        return load_posterior
    if name in ("InteractivePredictor", "ClickSession"):
        from laplace_head import interactive

        return getattr(interactive, name)
    raise AttributeError(f"module 'laplace_head' has no attribute {name!r}")
