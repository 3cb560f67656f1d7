"""The suite's copy of the wire-format vectors is the shared spec's, whenever the shared spec is at hand."""

from __future__ import annotations

import json

import pytest
from support import VECTORS, shared_spec_dir


def test_the_copy_of_the_vectors_matches_the_shared_spec() -> None:
    shared = shared_spec_dir()
    if shared is None:
        pytest.skip("no ../shared/spec beside the checkout (nor $EVENT_SPEC_DIR): nothing to compare with")
    original = json.loads((shared / "vectors.json").read_text())
    assert json.loads(VECTORS.read_text()) == original, (
        f"tests/vectors.json differs from {shared / 'vectors.json'}: refresh it with "
        f"`cp {shared / 'vectors.json'} tests/vectors.json`"
    )
