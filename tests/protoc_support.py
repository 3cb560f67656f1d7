"""Generates the protobuf service tests' modules at test time: protoc (grpcio-tools) with protoc-gen-event.

Nothing generated is checked in: ``generate(out)`` writes ``eventtest/shop_services_pb2.py`` (and its
``.pyi`` for mypy), ``eventtest/event_options_pb2.py`` and ``eventtest/shop_services_event.py`` under
``out``, from tests/protos. protoc runs this tree's plugin through a two-line script, as protoc would run
the installed ``protoc-gen-event`` console script found on PATH.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "tests" / "protos"
FILES = ("eventtest/shop_services.proto", "eventtest/event_options.proto")


def plugin_script(directory: Path) -> Path:
    """An executable ``protoc-gen-event`` running this tree's event.protoc_plugin with this interpreter."""
    script = directory / "protoc-gen-event"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
        "from event.protoc_plugin import main\nmain()\n"
    )
    script.chmod(0o755)
    return script


def generate(out: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """Run protoc on ``files`` (default: the test services) with --python_out, --pyi_out and --event_out."""
    out.mkdir(parents=True, exist_ok=True)
    plugin = plugin_script(out.parent)
    command = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"--plugin=protoc-gen-event={plugin}",
        f"--python_out={out}", f"--pyi_out={out}", f"--event_out={out}", *(files or FILES),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROTOS)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed ({done.returncode}): {done.stderr}")
    return done


_generated: Path | None = None


def importable() -> Path:
    """The test services generated once per process into a temporary directory put on ``sys.path``
    (protobuf's default descriptor pool takes each .proto once per process)."""
    global _generated
    if _generated is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="event-protoc-")) / "out"
        generate(out)
        sys.path.insert(0, str(out))
        _generated = out
    return _generated
