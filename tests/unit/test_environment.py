"""EnvironmentSettings: fields read from variables of their names, in any case."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices, Field, ValidationError

from tollgate.environment import EnvironmentSettings


class Example(EnvironmentSettings):
    table: str = Field(min_length=1)
    limit: int = 5
    path: str | None = Field(default=None, validation_alias=AliasChoices("new_path", "old_path"))


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TABLE", "table", "Table", "LIMIT", "NEW_PATH", "OLD_PATH", "PATH_X"):
        monkeypatch.delenv(name, raising=False)


def test_a_variable_is_read_by_its_field_name_in_any_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("Table", "usage")
    monkeypatch.setenv("LIMIT", "12")
    settings = Example()  # type: ignore[call-arg]
    assert (settings.table, settings.limit, settings.path) == ("usage", 12, None)


def test_constructor_values_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABLE", "from-env")
    assert Example(table="given").table == "given"


def test_aliases_are_read_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TABLE", "t")
    monkeypatch.setenv("OLD_PATH", "old")
    assert Example().path == "old"  # type: ignore[call-arg]
    monkeypatch.setenv("NEW_PATH", "new")
    assert Example().path == "new"  # type: ignore[call-arg]


def test_a_missing_or_invalid_variable_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="table"):
        Example()  # type: ignore[call-arg]
    monkeypatch.setenv("TABLE", "t")
    monkeypatch.setenv("LIMIT", "many")
    with pytest.raises(ValidationError, match="limit"):
        Example()  # type: ignore[call-arg]
