"""mkdocs hook: the CLI reference is the `event` parser's own help, so it cannot drift from the code."""

from __future__ import annotations

import argparse
from typing import Any

MARKER = "<!-- cli-reference -->"


def _helps(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[str, str]]:
    found = [(" ".join(path), parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _helps(sub, [*path, name])
    return found


def cli_reference() -> str:
    """Markdown with the help of `event` and of every subcommand."""
    from event.cli import build_parser

    parts = []
    for command, text in _helps(build_parser(), ["event"]):
        parts.append(f"## `{command}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
