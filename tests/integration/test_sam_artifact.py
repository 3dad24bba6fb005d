"""The artifact `sam build` made (`make build`) holds what the function needs, built for arm64."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tollgate.local.tables import repo_root

pytestmark = pytest.mark.integration

# Lambda's limit for a function's unzipped code plus its layers.
UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024
# ELF header: e_ident[EI_CLASS] at 4, e_ident[EI_DATA] at 5, e_machine (2 bytes) at 18.
ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
EM_AARCH64 = 183

REQUIRED_FILES = (
    "run.sh",
    "tollgate/app.py",
    "tollgate/settings.py",
    "tollgate/encodings/o200k_base.tiktoken.gz",
    "tollgate/encodings/cl100k_base.tiktoken.gz",
    "tollgate/data/models.json",
    "prompts/default.md",
    "prompts/internal/summarize.md",
)


@pytest.fixture(scope="module")
def artifact() -> Path:
    build_dir = repo_root() / ".aws-sam" / "build"
    if not build_dir.is_dir():
        pytest.skip(f"{build_dir} is missing: run `make build` (make test builds first)")
    return build_dir / "ChatFunction"


def _elf_machine(path: Path) -> int | None:
    with path.open("rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or not header.startswith(ELF_MAGIC):
        return None
    little_endian = header[5] == 1
    return int.from_bytes(header[18:20], "little" if little_endian else "big")


def _shared_objects(root: Path) -> list[Path]:
    return [path for path in root.rglob("*.so*") if path.is_file() and ".so" in path.name]


def test_artifact_has_code_data_prompts_and_handler(artifact: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (artifact / name).is_file()]
    assert missing == []
    assert (artifact / "run.sh").stat().st_mode & stat.S_IXOTH
    assert (artifact / "run.sh").read_text(encoding="utf-8").startswith("#!/bin/sh\n")
    assert list((artifact / "tollgate").rglob("__pycache__")) == [], "no stale local bytecode"


def test_artifact_has_the_runtime_dependencies(artifact: Path) -> None:
    for package in ("uvicorn", "starlette", "openai", "tiktoken", "jwt", "pydantic", "botocore"):
        assert (artifact / package / "__init__.py").is_file(), package


def test_native_code_is_built_for_arm64(artifact: Path) -> None:
    machines = {path: _elf_machine(path) for path in _shared_objects(artifact)}
    assert machines, "expected compiled wheels (tiktoken, pydantic-core, ...)"
    x86 = [str(path.relative_to(artifact)) for path, arch in machines.items() if arch == EM_X86_64]
    assert x86 == []
    not_arm = {
        str(path.relative_to(artifact)): machine
        for path, machine in machines.items()
        if machine is not None and machine != EM_AARCH64
    }
    assert not_arm == {}
    (tiktoken_extension,) = (artifact / "tiktoken").glob("_tiktoken*.so")
    assert "aarch64" in tiktoken_extension.name
    assert _elf_machine(tiktoken_extension) == EM_AARCH64


def test_unzipped_size_is_within_the_lambda_limit(artifact: Path) -> None:
    total = sum(
        os.path.getsize(os.path.join(directory, name))
        for directory, _subdirectories, names in os.walk(artifact)
        for name in names
    )
    print(f"ChatFunction artifact: {total / 1024 / 1024:.1f} MiB unzipped")
    assert total < UNZIPPED_LIMIT_BYTES
