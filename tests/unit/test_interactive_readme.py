"""README's "Interactive use" example runs as written, against a tiny fitted posterior, the demo
dataset's first ellipse and random_walker."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from helpers.laplace_fixtures import make_fitted_run

from laplace_head.dataset.demo import write_demo_dataset

README = Path(__file__).resolve().parents[2] / "README.md"
LAPLACE_DIR = "demo_project/laplace/no_image/run_v1"
IMAGES_ROOT = "demo_data/images_root"


def _interactive_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Interactive use\n") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the Interactive use section holds one python example"
    return blocks[0]


def test_readme_interactive_example_runs(tmp_path, capsys) -> None:
    code = _interactive_example()
    assert LAPLACE_DIR in code and IMAGES_ROOT in code
    assert "point_coords=" in code and "point_labels=" in code  # SamPredictor's names
    run = make_fitted_run(tmp_path / "project")
    images_root, _ = write_demo_dataset(tmp_path / "data", per_class=1)
    code = code.replace(LAPLACE_DIR, str(run.laplace_dir)).replace(IMAGES_ROOT, str(images_root))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    image, result, session = namespace["image"], namespace["result"], namespace["session"]
    assert namespace["mask"].shape == image.shape[:2] and namespace["mask"].dtype == bool
    assert namespace["bald"].shape == image.shape[:2]
    click = namespace["click"]
    assert 0 <= click.x < image.shape[1] and 0 <= click.y < image.shape[0]
    assert click.label == int(result.predictive_probability[click.row, click.col] > 0.5)
    assert len(session.clicks) == 1  # the undo dropped the suggested click
    np.testing.assert_array_equal(
        session.predict().map_logits, session.predictor.predict([[64, 48]], [1]).map_logits
    )
    assert capsys.readouterr().out.strip() == f"{click.x} {click.y} {click.label}"
