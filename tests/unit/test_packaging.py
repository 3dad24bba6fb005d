"""The Lambda artifact installs src/requirements.txt; the package declares pyproject.toml."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tollgate.local.tables import repo_root


def _normalised(requirements: list[str]) -> dict[str, tuple[str, str, str]]:
    """Canonical name -> (extras, specifiers, marker), each in a canonical spelling."""
    normalised: dict[str, tuple[str, str, str]] = {}
    for line in requirements:
        requirement = Requirement(line)
        normalised[canonicalize_name(requirement.name)] = (
            ",".join(sorted(requirement.extras)),
            str(requirement.specifier),
            str(requirement.marker or ""),
        )
    return normalised


def _lambda_requirements() -> list[str]:
    text = (repo_root() / "src" / "requirements.txt").read_text(encoding="utf-8")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def _project_dependencies() -> list[str]:
    with (repo_root() / "pyproject.toml").open("rb") as handle:
        dependencies: list[str] = tomllib.load(handle)["project"]["dependencies"]
    return dependencies


def test_lambda_requirements_match_the_project_dependencies() -> None:
    assert _normalised(_lambda_requirements()) == _normalised(_project_dependencies())


def test_lambda_requirements_have_no_duplicates() -> None:
    requirements = _lambda_requirements()
    assert len(_normalised(requirements)) == len(requirements)
