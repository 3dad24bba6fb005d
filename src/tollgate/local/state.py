"""The local run's state file: where `make run`'s servers listen, for other local commands.

`make run` writes it once its servers are up (and clears it when it stops); `make
aggregate` reads it to reach the same moto server, tables and log group. Keys used:
`aws_endpoint` (the moto server, every service), optional per-service overrides
`dynamodb_endpoint` / `logs_endpoint` / `cloudwatch_endpoint`, `tables` (logical id ->
table name, e.g. {"UsageTable": "..."}), `cost_log_group`, `pid`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

STATE_FILE_ENV = "TOLLGATE_LOCAL_STATE"


def state_path() -> Path:
    """`.local/endpoints.json` in the checkout, unless TOLLGATE_LOCAL_STATE names another file."""
    override = os.environ.get(STATE_FILE_ENV)
    if override:
        return Path(override)
    from tollgate.local.tables import repo_root

    return repo_root() / ".local" / "endpoints.json"


def write_state(state: dict[str, Any]) -> Path:
    """Atomically replace the state file, so a reader never sees half of it."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".endpoints-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_state() -> dict[str, Any]:
    """The last state written, or {} when no local run has written one."""
    try:
        loaded = json.loads(state_path().read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def clear_state() -> None:
    state_path().unlink(missing_ok=True)
