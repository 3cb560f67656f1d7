"""mypy --strict accepts typed handlers, as users write them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "typing" / "typed_app.py"


def test_mypy_accepts_typed_handler_signatures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(APP)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_rejects_a_wrong_use_of_the_payload(tmp_path: Path) -> None:
    bad = tmp_path / "bad_app.py"
    bad.write_text(
        APP.read_text().replace("subject: str = msg.body.subject", "subject: int = msg.body.subject")
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Incompatible types in assignment" in result.stdout
