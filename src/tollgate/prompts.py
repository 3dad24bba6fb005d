"""System prompts: files in prompts/, loaded once, chosen by name from an allow-list."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Chat prompts are prompts/<name>.md; the summariser's lives in prompts/internal/.
PROMPT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SUMMARY_PROMPT = "internal/summarize.md"


def default_prompts_dir() -> Path:
    """prompts/ beside the package in the Lambda artifact, or at the top of a checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir.parent / "prompts", package_dir.parent.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("prompts/ directory not found")


@dataclass(frozen=True, slots=True)
class PromptLibrary:
    chat: dict[str, str]
    summary: str

    @classmethod
    def load(cls, directory: Path | None = None) -> PromptLibrary:
        directory = directory or default_prompts_dir()
        chat = {
            path.stem: path.read_text(encoding="utf-8").strip()
            for path in sorted(directory.glob("*.md"))
            if PROMPT_NAME.fullmatch(path.stem)
        }
        if "default" not in chat:
            raise FileNotFoundError(f"{directory} has no default.md")
        summary = (directory / SUMMARY_PROMPT).read_text(encoding="utf-8").strip()
        return cls(chat=chat, summary=summary)

    def get(self, name: str) -> str | None:
        return self.chat.get(name) if PROMPT_NAME.fullmatch(name) else None
