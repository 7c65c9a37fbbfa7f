"""The report of a stage-6 fit: the validation-NLL grid figure."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("n_temperatures", [1, 3])
def test_val_nll_grid_figure_draws_the_axis_that_was_searched(
    tmp_path, monkeypatch, n_temperatures
):
    """A fixed-T fit (one grid column) plots NLL against the prior, not a one-point T curve."""
    import matplotlib.pyplot as plt

    import laplace_head.bayes.fit_report as fit_report

    saved = []
    real_save = fit_report._save

    def keep_axes(fig, path):
        saved.append([(ax.get_xlabel(), ax.get_title(), len(ax.lines)) for ax in fig.axes])
        real_save(fig, path)

    priors = [0.1, 1.0, 10.0, 100.0]
    temperatures = [1.0, 10.0, 100.0][:n_temperatures]
    nll = np.linspace(0.3, 0.2, len(priors) * n_temperatures).reshape(len(priors), -1)
    monkeypatch.setattr(fit_report, "_save", keep_axes)
    fit_report.plot_val_nll_grid(nll, priors, temperatures, (3, 0), 0.25, tmp_path / "g.png")
    assert (tmp_path / "g.png").is_file() and not plt.get_fignums()
    xlabel, title, n_lines = saved[0][1]
    if n_temperatures == 1:
        assert xlabel == "prior precision" and "T fixed at 1" in title
        assert n_lines == 3  # the curve, the chosen marker, the MAP line
    else:
        assert xlabel == "likelihood temperature T"
        assert n_lines == len(priors) + 1
