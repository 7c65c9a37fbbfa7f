"""envs/: the conda environment of the rules matches pyproject.toml's dependencies.

Conda channels are not reachable in CI, so nothing here creates the environment; these tests
check that the environment file asks for the same packages, with the same version bounds, as
the package's own metadata, and that every rule's ``conda:`` directive points at it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = REPO_ROOT / "envs" / "laplace_head.yaml"
POST_DEPLOY = REPO_ROOT / "envs" / "laplace_head.post-deploy.sh"

# PyPI name -> conda-forge name, where they differ. matplotlib-base is matplotlib without a
# GUI toolkit (the workflow only writes figures to files).
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
# Conda-only tooling that has no counterpart in pyproject's dependencies.
CONDA_EXTRAS = {"python", "pip"}


def parse_conda_spec(spec: str) -> tuple[str, SpecifierSet]:
    """Split a conda match spec such as ``"pytorch >=2.6"`` into name and bounds.

    Only the subset used in envs/ is accepted: a package name, optionally followed by
    comma-separated PEP 440 style bounds (no channel prefix, no build string).
    """
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*([<>=!~][^\s]*)?\s*", spec)
    if match is None:
        raise ValueError(f"unsupported conda spec {spec!r}: use 'name >=a,<b'")
    name, bounds = match.groups()
    return name.lower(), SpecifierSet(bounds or "")


def load_env(path: Path) -> tuple[dict[str, SpecifierSet], dict[str, SpecifierSet]]:
    """The (conda, pip) requirements of an environment file, by canonical name."""
    env = yaml.safe_load(path.read_text(encoding="utf-8"))
    conda: dict[str, SpecifierSet] = {}
    pip: dict[str, SpecifierSet] = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            assert set(entry) == {"pip"}, f"unexpected mapping in dependencies: {entry}"
            for line in entry["pip"]:
                requirement = Requirement(line)
                name = canonicalize_name(requirement.name)
                assert name not in pip, f"{name} listed twice in the pip section"
                pip[name] = requirement.specifier
        else:
            name, bounds = parse_conda_spec(entry)
            assert name not in conda, f"{name} listed twice in the conda dependencies"
            conda[name] = bounds
    return conda, pip


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def project_requirements() -> dict[str, SpecifierSet]:
    requirements = [Requirement(line) for line in pyproject()["project"]["dependencies"]]
    return {canonicalize_name(r.name): r.specifier for r in requirements}


def test_parse_conda_spec() -> None:
    assert parse_conda_spec("pytorch >=2.6,<3") == ("pytorch", SpecifierSet(">=2.6,<3"))
    assert parse_conda_spec("pip") == ("pip", SpecifierSet(""))
    with pytest.raises(ValueError, match="unsupported conda spec"):
        parse_conda_spec("conda-forge::pytorch 2.1 cuda*")


def test_env_lists_every_dependency_of_pyproject_with_the_same_bounds() -> None:
    conda, pip = load_env(ENV_FILE)
    env_bounds: dict[str, SpecifierSet] = dict(pip)
    conda_to_pypi = {conda_name: pypi for pypi, conda_name in CONDA_NAME.items()}
    for conda_name, bounds in conda.items():
        if conda_name in CONDA_EXTRAS:
            continue
        pypi_name = canonicalize_name(conda_to_pypi.get(conda_name, conda_name))
        assert pypi_name not in env_bounds, f"{pypi_name} is both a conda and a pip dependency"
        env_bounds[pypi_name] = bounds

    required = project_requirements()
    assert sorted(env_bounds) == sorted(required), (
        "envs/laplace_head.yaml and pyproject.toml list different packages: "
        f"only in envs: {sorted(set(env_bounds) - set(required))}, "
        f"only in pyproject: {sorted(set(required) - set(env_bounds))}"
    )
    for name, bounds in required.items():
        assert env_bounds[name] == bounds, (
            f"{name}: pyproject.toml says '{bounds}', envs/laplace_head.yaml says "
            f"'{env_bounds[name]}'"
        )


def test_env_python_matches_requires_python() -> None:
    conda, _ = load_env(ENV_FILE)
    assert conda["python"] == SpecifierSet(pyproject()["project"]["requires-python"])
    assert "pip" in conda, "the pip section needs pip in the conda dependencies"


def test_every_rule_uses_an_existing_env_file() -> None:
    sources = [REPO_ROOT / "Snakefile", *sorted((REPO_ROOT / "rules").glob("*.smk"))]
    directives = []
    for source in sources:
        text = source.read_text(encoding="utf-8")
        for match in re.finditer(r"^\s*conda:\s*\n\s*\"([^\"]+)\"", text, flags=re.MULTILINE):
            directives.append((source, match.group(1)))
    assert directives, "no rule has a conda: directive"
    for source, relative in directives:
        target = (source.parent / relative).resolve()
        assert target == ENV_FILE, f"{source.name}: conda: {relative} is not envs/laplace_head.yaml"


def test_post_deploy_script_installs_the_package_from_the_checkout() -> None:
    text = POST_DEPLOY.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "pip install --no-deps -e ." in text
    assert os.access(POST_DEPLOY, os.X_OK)


# Lowest releases without known-exploitable flaws in what this project does with them:
# torch.load(weights_only=True) can be bypassed before torch 2.6 (CVE-2025-32434); torchvision
# 0.21 is the release built against torch 2.6; Pillow before 10.3 bundles libwebp builds with the
# heap overflow of CVE-2023-4863 (and 10.3 fixes CVE-2024-28219).
SECURITY_FLOORS = {"torch": "2.6", "torchvision": "0.21", "pillow": "10.3"}
# The package metadata states what works, not what one machine serves: no upper pin (the
# Makefile pins the exact releases it installs).
UNPINNED_ABOVE = ("torch", "torchvision")
LOWER_BOUND_OPERATORS = (">=", ">", "~=", "==", "===")
UPPER_BOUND_OPERATORS = ("<", "<=", "~=", "==", "===")


def _lowest_allowed(bounds: SpecifierSet) -> Version | None:
    """The largest lower bound of ``bounds`` (None when nothing bounds it from below)."""
    lows = [Version(s.version.rstrip(".*")) for s in bounds if s.operator in LOWER_BOUND_OPERATORS]
    return max(lows, default=None)


def _env_bounds_by_pypi_name() -> dict[str, SpecifierSet]:
    conda, pip = load_env(ENV_FILE)
    conda_to_pypi = {conda_name: pypi for pypi, conda_name in CONDA_NAME.items()}
    bounds = {canonicalize_name(conda_to_pypi.get(n, n)): b for n, b in conda.items()}
    return {**bounds, **pip}


@pytest.mark.parametrize("source", ["pyproject.toml", "envs/laplace_head.yaml"])
@pytest.mark.parametrize("name", sorted(SECURITY_FLOORS))
def test_dependency_floors_exclude_vulnerable_releases(source: str, name: str) -> None:
    bounds = project_requirements() if source == "pyproject.toml" else _env_bounds_by_pypi_name()
    assert name in bounds, f"{source} does not list {name}"
    floor = Version(SECURITY_FLOORS[name])
    lowest = _lowest_allowed(bounds[name])
    assert lowest is not None and lowest >= floor, (
        f"{source}: {name} '{bounds[name]}' admits releases below {floor} (known "
        f"vulnerabilities); raise the floor to '>={floor}'"
    )
    below = Version(f"{floor.major}.{floor.minor - 1}.99") if floor.minor else None
    if below is not None:
        assert not bounds[name].contains(below, prereleases=True), (source, name, str(below))


@pytest.mark.parametrize("source", ["pyproject.toml", "envs/laplace_head.yaml"])
@pytest.mark.parametrize("name", UNPINNED_ABOVE)
def test_torch_has_no_upper_pin_in_the_metadata(source: str, name: str) -> None:
    bounds = project_requirements() if source == "pyproject.toml" else _env_bounds_by_pypi_name()
    uppers = [str(s) for s in bounds[name] if s.operator in UPPER_BOUND_OPERATORS]
    assert not uppers, (
        f"{source}: {name} carries the upper pin {', '.join(uppers)}; the package metadata "
        "gives only the floor (the Makefile pins what it installs). Remove it."
    )
