"""Every code block of the README and docs/ is executed, so no example goes stale:

- ``python``: run as a script in a vhost of its own; a ``text`` block right after it is its output;
- ``bash``: every ``event ...`` command line parses with the real CLI parser, and every
  ``python benches/...`` script starts (``--help``);
- ``yaml``: parses.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml
from support import Management

from event.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"```(?P<lang>\w+)\n(?P<code>.*?)```\n(?:\n```text\n(?P<output>.*?)```)?", re.S)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(lang: str) -> list[tuple[str, str, str | None]]:
    found = []
    for page in PAGES:
        for number, match in enumerate(FENCE.finditer(page.read_text()), start=1):
            if match["lang"] == lang:
                found.append((f"{page.relative_to(ROOT)}#{number}", match["code"], match["output"]))
    return found


def test_every_block_is_of_a_checked_kind() -> None:
    kinds = {m["lang"] for page in PAGES for m in FENCE.finditer(page.read_text())}
    assert kinds <= {"python", "bash", "yaml", "text"}, kinds


@pytest.mark.parametrize(("where", "code", "output"), blocks("python"), ids=[b[0] for b in blocks("python")])
def test_python_example_runs(
    where: str, code: str, output: str | None, amqp_url: str, management: Management, tmp_path: Path
) -> None:
    vhost = f"docs-{uuid.uuid4().hex[:8]}"
    management.request("PUT", f"/api/vhosts/{vhost}")
    management.request("PUT", f"/api/permissions/{vhost}/{management.user}",
                       {"configure": ".*", "write": ".*", "read": ".*"})  # fmt: skip
    try:
        parts = urllib.parse.urlsplit(amqp_url)
        url = urllib.parse.urlunsplit(parts._replace(path="/" + vhost))
        script = tmp_path / "example.py"
        script.write_text(code)
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120,
            env={**os.environ, "AMQP_URL": url}, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
        if output is not None:
            assert result.stdout == output, f"{where} printed:\n{result.stdout}"
    finally:
        management.request("DELETE", f"/api/vhosts/{vhost}")


@pytest.mark.parametrize(("where", "code", "output"), blocks("bash"), ids=[b[0] for b in blocks("bash")])
def test_shell_example_uses_real_commands(where: str, code: str, output: str | None) -> None:
    parser = build_parser()
    for line in code.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("python benches/"):  # a script of the checkout: it exists and starts
            script = ROOT / shlex.split(line)[1]
            started = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, timeout=60)
            assert started.returncode == 0, f"{where}: `{line}` fails: {started.stderr.decode()}"
            continue
        if not line.startswith("event "):
            continue
        words = shlex.split(line)[1:]
        try:
            parser.parse_args(words)
        except SystemExit as exc:
            raise AssertionError(f"{where}: `{line}` does not parse") from exc


@pytest.mark.parametrize(("where", "code", "output"), blocks("yaml"), ids=[b[0] for b in blocks("yaml")])
def test_yaml_example_parses(where: str, code: str, output: str | None) -> None:
    assert yaml.safe_load(code) is not None, where
