"""Settings read from the environment: a pydantic model whose fields are variable names.

What pydantic-settings did for us, without its 2 MB of modules resident in every function:
each field is read from the variable of its name in any case (or from the names of its
AliasChoices, the first one set), values given to the constructor win over the
environment, and pydantic validates (and coerces) the strings as for any input.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict


class EnvironmentSettings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def __init__(self, **values: Any) -> None:
        super().__init__(**{**environment_values(type(self), os.environ), **values})


def environment_values(model: type[BaseModel], environ: Mapping[str, str]) -> dict[str, str]:
    """The model's fields that are set in `environ`, by field name (variable names ignore case)."""
    by_lower_name = {name.lower(): value for name, value in environ.items()}
    found = {}
    for field_name, field in model.model_fields.items():
        alias = field.validation_alias
        names = [str(choice) for choice in alias.choices] if isinstance(alias, AliasChoices) else []
        for name in names or [field_name]:
            if name.lower() in by_lower_name:
                # Passed under the name pydantic validates it by: the field's, or the alias's.
                found[name if names else field_name] = by_lower_name[name.lower()]
                break
    return found
