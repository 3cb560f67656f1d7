"""mypy --strict accepts typed handlers, as users write them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "typing" / "typed_app.py"
CONTRACTS = APP.parent / "typed_contracts.py"
WRONG = APP.parent / "typed_contracts_wrong.py"


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of this module's own, new each run: the first run checks `event` and the standard
    library's stubs, the others only their own file (each run took 7-10 s without it). New, so that
    nothing an earlier run or another checkout left can be read; outside the tree, so nothing is left
    in it."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", f"--cache-dir={cache}", "--show-error-codes", str(path)],
        capture_output=True,
        text=True,
    )


def test_mypy_accepts_typed_handler_signatures(mypy_cache: Path) -> None:
    result = _mypy(APP, mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_rejects_a_wrong_use_of_the_payload(tmp_path: Path, mypy_cache: Path) -> None:
    bad = tmp_path / "bad_app.py"
    bad.write_text(
        APP.read_text().replace("subject: str = msg.body.subject", "subject: int = msg.body.subject")
    )
    result = _mypy(bad, mypy_cache)
    assert result.returncode == 1
    assert "Incompatible types in assignment" in result.stdout


def test_mypy_accepts_typed_contracts(mypy_cache: Path) -> None:
    result = _mypy(CONTRACTS, mypy_cache)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_rejects_each_wrong_use_of_a_contract_with_its_error_code(mypy_cache: Path) -> None:
    # Each line marked "# E: code" must be rejected with that code, and no other line at all.
    expected = {
        (number, line.rsplit("# E: ", 1)[1].strip())
        for number, line in enumerate(WRONG.read_text().splitlines(), start=1)
        if "  # E: " in line
    }
    result = _mypy(WRONG, mypy_cache)
    found = set(re.findall(r"typed_contracts_wrong\.py:(\d+): error: .*\[([a-z-]+)\]$", result.stdout, re.M))
    assert {(int(n), code) for n, code in found} == expected, result.stdout
    assert len(expected) >= 8  # wrong type, missing field (dataclass, TypedDict), another type, ...
