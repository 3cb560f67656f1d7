"""mypy --strict accepts typed handlers, as users write them."""

from __future__ import annotations

import re
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


CONTRACTS = APP.parent / "typed_contracts.py"
WRONG = APP.parent / "typed_contracts_wrong.py"


def _mypy(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes", str(path)],
        capture_output=True,
        text=True,
    )


def test_mypy_accepts_typed_contracts() -> None:
    result = _mypy(CONTRACTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_rejects_each_wrong_use_of_a_contract_with_its_error_code() -> None:
    # Each line marked "# E: code" must be rejected with that code, and no other line at all.
    expected = {
        (number, line.rsplit("# E: ", 1)[1].strip())
        for number, line in enumerate(WRONG.read_text().splitlines(), start=1)
        if "  # E: " in line
    }
    result = _mypy(WRONG)
    found = set(re.findall(r"typed_contracts_wrong\.py:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M))
    assert {(int(n), code) for n, code in found} == expected, result.stdout
    assert len(expected) >= 8  # wrong type, missing field (dataclass, TypedDict), another type, ...
