"""`event exec` / pool.command() running real executables (shell scripts the test writes)."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import Isolation, Probe, eventually

from event import Publisher, WorkerPool, wire
from event.message import DeadLetter
from event.runners.hooks import DeadHook

# Long enough that a quick script is not taken for a hung one on a loaded machine (seen at 0.5 s: a fork
# and exec under load took longer, and the runner rightly killed and retried a job that would have ended).
TIMEOUT_S = 2.0
# $1 is the folder for the test's records; the body's args follow: a kind and the job's number.
JOB = """#!/bin/sh
dir="$1"; kind="$2"; n="$3"
echo "$EVENT_ROUTING_KEY $EVENT_ATTEMPT" > "$dir/calls/$n.$EVENT_ATTEMPT"
case "$kind" in
  ok) cat > "$dir/stdin/$n"; exit 0 ;;
  fail) echo "job $n broke" >&2; exit 1 ;;
  temp) if [ "$EVENT_ATTEMPT" = 1 ]; then echo "busy" >&2; exit 75; fi; exit 0 ;;
  sleep) sleep 30 & echo "$$ $!" > "$dir/pids/$n"; wait ;;
  echo) shift 2; printf '%s\\n' "$@" > "$dir/echo"; exit 0 ;;
esac
exit 3
"""
KINDS = ("ok", "fail", "temp", "sleep")


def script(tmp_path: Path, text: str, name: str = "job.sh") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    for folder in ("calls", "stdin", "pids"):
        (tmp_path / folder).mkdir(exist_ok=True)
    return path


def gone(pid_file: Path) -> bool:
    """Whether the script whose pids the file holds, and the child it started, have ended."""
    for pid in pid_file.read_text().split():
        stat_file = Path(f"/proc/{pid}/stat")
        if stat_file.exists() and stat_file.read_text().split()[2] != "Z":
            return False
    return True


def calls(tmp_path: Path, n: int) -> int:
    return len(list((tmp_path / "calls").glob(f"{n}.*")))


async def test_a_thousand_mixed_exits_are_acked_retried_or_dead_as_the_command_says(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    job = script(tmp_path, JOB)
    hook_script = script(tmp_path, "#!/bin/sh\necho hook broke >&2\nexit 1\n", "hook.sh")
    hook = DeadHook(str(hook_script))  # fails every time: nothing may be lost because of it
    pool = WorkerPool(**pool_kwargs, concurrency=100, on_dead=hook)
    pool.command("app.job", argv=[str(job), str(tmp_path)], timeout=TIMEOUT_S, retries=1, prefetch=200)
    jobs = {n: KINDS[n % len(KINDS)] for n in range(1000)}
    expected_dead = {n for n, kind in jobs.items() if kind in ("fail", "sleep")}
    try:
        async with pool.running():
            async with Publisher(**pool_kwargs) as publisher:
                await asyncio.gather(
                    *(publisher.publish("app.job", {"args": [k, str(n)], "n": n}) for n, k in jobs.items())
                )
            await eventually(lambda: hook.failed == len(expected_dead), timeout=90)
    finally:
        await hook.close()

    per_kind = {kind: sorted({calls(tmp_path, n) for n, k in jobs.items() if k == kind}) for kind in KINDS}
    assert per_kind == {"ok": [1], "fail": [2], "temp": [2], "sleep": [2]}, "runs per job"
    assert orjson.loads((tmp_path / "stdin" / "0").read_bytes()) == {"args": ["ok", "0"], "n": 0}
    assert (tmp_path / "calls" / "2.2").read_text() == "app.job 2\n"
    dead = await probe.take_all(pool.dead_queue)
    errors = {orjson.loads(m.body)["n"]: m.header.properties.headers[wire.H_ERROR] for m in dead}
    assert set(errors) == expected_dead, "dead messages"
    for n, error in errors.items():
        if jobs[n] == "fail":
            assert "job.sh exited with exit 1" in error and f"job {n} broke" in error
        else:
            assert f"ran past its {TIMEOUT_S:g} s timeout; its process group was killed" in error
    for pid_file in (tmp_path / "pids").iterdir():  # the killed scripts are gone, with their children
        assert gone(pid_file), f"job {pid_file.name} outlived its timeout"
    assert await probe.depth(f"{iso.namespace}:app.job") == 0
    assert hook.told == 0 and hook.failed == len(expected_dead)


# Two lines that never read stdin: record the call, exit with the status the body's args give. The runner
# finds the pipe for the body closed (or closing while it writes); the exit status alone must decide.
NO_READ = '#!/bin/sh\necho "$EVENT_ATTEMPT" > "$1/calls/$EVENT_MESSAGE_ID.$EVENT_ATTEMPT"; exit "$2"\n'


@pytest.mark.both_loops  # uvloop refuses the write once it saw the pipe close; asyncio fails the drain
async def test_a_command_that_exits_without_reading_its_stdin_is_judged_by_its_exit_status(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe, tmp_path: Path
) -> None:
    job = script(tmp_path, NO_READ, "no_read.sh")
    pool = WorkerPool(**pool_kwargs)
    pool.command("app.quick", argv=[str(job), str(tmp_path)], timeout=TIMEOUT_S, retries=1)
    codes = {f"ok-{n}": "0" for n in range(10)} | {"fail-0": "3", "fail-1": "3"}
    big = "x" * 300_000  # more than a pipe holds: the write is under way when the child exits
    async with pool.running():
        async with Publisher(**pool_kwargs) as publisher:
            for message_id, code in codes.items():
                await publisher.publish("app.quick", {"args": [code], "pad": big}, message_id=message_id)
        await eventually(lambda: probe.depth(pool.dead_queue), timeout=60)
        await eventually(lambda: len(list((tmp_path / "calls").iterdir())) >= 14, timeout=60)
        await asyncio.sleep(0.5)  # a late retry of an acked job would show here
    runs = {
        message_id: sorted(p.name for p in (tmp_path / "calls").glob(f"{message_id}.*"))
        for message_id in codes
    }
    assert runs == {
        message_id: [f"{message_id}.1"] if code == "0" else [f"{message_id}.1", f"{message_id}.2"]
        for message_id, code in codes.items()
    }, "runs per job: each exit 0 acked at once, each exit 3 retried once"
    dead = await probe.take_all(pool.dead_queue)
    errors = {m.header.properties.message_id: m.header.properties.headers[wire.H_ERROR] for m in dead}
    assert sorted(errors) == ["fail-0", "fail-1"]
    assert all("no_read.sh exited with exit 3" in error for error in errors.values()), errors
    assert await probe.depth(f"{iso.namespace}:app.quick") == 0


async def test_args_reach_the_command_as_literal_arguments_never_through_a_shell(
    pool_kwargs: dict[str, Any], probe: Probe, tmp_path: Path
) -> None:
    job = script(tmp_path, JOB)
    pool = WorkerPool(**pool_kwargs)
    pool.command("app.echo", argv=[str(job), str(tmp_path)], retries=0)
    literal = ["echo", "-", "; rm -rf /", "$(touch pwned)", "a b", "*", ""]
    async with pool.running():
        async with Publisher(**pool_kwargs) as publisher:
            await publisher.publish("app.echo", {"args": literal})
            await publisher.publish("app.echo", {"Args": ["echo", 7]}, message_id="bad")
        await eventually(lambda: (tmp_path / "echo").exists())
        await eventually(lambda: probe.depth(pool.dead_queue), timeout=20)
    assert (tmp_path / "echo").read_text().split("\n")[:-1] == literal[1:]
    assert not (tmp_path / "pwned").exists() and not (Path.cwd() / "pwned").exists()
    [dead] = await probe.take_all(pool.dead_queue)
    assert dead.header.properties.message_id == "bad"
    assert "'Args' must hold strings only: item 1 is int 7" in dead.header.properties.headers[wire.H_ERROR]


async def test_shutdown_kills_a_child_past_the_grace_and_returns_its_message(
    pool_kwargs: dict[str, Any], probe: Probe, tmp_path: Path
) -> None:
    job = script(tmp_path, JOB)
    pool = WorkerPool(**pool_kwargs, grace=0.5)
    pool.command("app.slow", argv=[str(job), str(tmp_path)], timeout=60)
    async with pool.running():
        async with Publisher(**pool_kwargs) as publisher:
            await publisher.publish("app.slow", {"args": ["sleep", "1"]})
        await eventually(lambda: (tmp_path / "pids" / "1").exists())
    assert gone(tmp_path / "pids" / "1"), "the child outlived the worker"
    assert await probe.depth(pool.consumers[0].queue) == 1, "the message did not go back to its queue"
    assert await probe.depth(pool.dead_queue) == 0


def test_a_command_that_cannot_run_is_refused_before_anything_starts(tmp_path: Path) -> None:
    import subprocess

    for argv in (
        ["exec", "app.x", "--", str(tmp_path / "missing.sh")],
        ["exec", "app.x", "--bogus", "--", "sh"],
    ):
        done = subprocess.run([sys.executable, "-m", "event.cli", *argv], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "AMQP_URL": "amqp://127.0.0.1:1/"})  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "not an executable file" in done.stderr or "unrecognized arguments: --bogus" in done.stderr


@pytest.mark.both_loops
async def test_a_dead_letter_hook_that_never_reads_its_stdin_is_judged_by_its_exit_status(
    tmp_path: Path,
) -> None:
    """uvloop refused the write of the letter to a hook that had exited without reading it (a RuntimeError
    on the closed pipe), so a hook that succeeded was counted as failed."""
    quiet = script(tmp_path, "#!/bin/sh\nexit 0\n", "quiet.sh")
    hook = DeadHook(str(quiet))
    letter = DeadLetter("m-1", "app.x", "ns:x", "ns:dead", "boom", 2)
    for _ in range(20):
        hook(letter)
    try:
        await eventually(lambda: hook.told + hook.failed == 20, timeout=30)
    finally:
        await hook.close()
    assert (hook.told, hook.failed) == (20, 0)
