"""The README opens with the two commands and carries the current config reference."""

from pathlib import Path

from laplace_head.config import schema_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text(encoding="utf-8")[:400]
    assert head.index("make demo") < head.index("make test")


def test_readme_config_reference_matches_schema() -> None:
    # Regenerate with: python -m laplace_head config-reference --update-readme README.md
    assert schema_markdown() in README.read_text(encoding="utf-8")
