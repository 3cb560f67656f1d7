"""Every Python block of the README and docs/ runs, each in a vhost of its own; a ```text block right
after it is the output it must print."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import pytest
from support import Management

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"```python\n(?P<code>.*?)```\n(?:\n```text\n(?P<output>.*?)```)?", re.S)


def examples() -> list[tuple[str, str, str | None]]:
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for number, match in enumerate(FENCE.finditer(page.read_text()), start=1):
            found.append((f"{page.relative_to(ROOT)}#{number}", match["code"], match["output"]))
    return found


@pytest.mark.parametrize(("where", "code", "output"), examples(), ids=[e[0] for e in examples()])
def test_doc_example_runs(
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
