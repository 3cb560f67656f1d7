"""The pull API at the issue's scale, driven the way a worker in another language would: 1,000 jobs
taken by 4 `curl` loops in shell, a tenth failing for good (dead, with their reason), one in twenty
abandoning its lease (never answered); every job is acked once or dead, nothing is lost, and each
abandoned job is taken again once its lease ran out."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import orjson
import pytest
from gateway_support import gateway
from support import Isolation, Management, eventually

from event import Publisher

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]

JOBS = 1000
LEASE_S = 3  # short, so abandoned jobs come back quickly; long enough for a loop on a busy machine

# One worker: take a job, decide by its id, answer (or not), write what it did and when to its log.
# Jobs n % 10 == 0 fail for good (dead, reason "bad job n"); n % 20 == 5 are abandoned the first time
# (mkdir is the loops' shared "first time" test: it succeeds once per name); every other job is acked.
LOOP = r"""
set -u
base="$1"; queue="$2"; dir="$3"; me="$4"
log="$dir/worker-$me.log"; job_file="$dir/job-$me"
# Fields are read with bash's own regex, the time from $EPOCHREALTIME, the job from a file, and each
# answer's status written by curl itself (-w): curl is the only process the loop starts.
id_re='"body":\{"id":([0-9]+)\}'; lease_re='"lease":"([0-9a-f]+)"'; attempt_re='"attempt":([0-9]+)'
while [ ! -e "$dir/stop" ]; do
  curl -sS --fail-with-body -o "$job_file" "$base/api/queues/$queue/next?lease=__LEASE__&wait=1" || {
    echo "error next" >>"$log"; continue; }
  job=""; read -r job <"$job_file" || true
  [ -z "$job" ] && continue  # 204: nothing waiting right now
  [[ $job =~ $id_re ]] && n=${BASH_REMATCH[1]} || { echo "error job $job" >>"$log"; continue; }
  [[ $job =~ $lease_re ]] && lease=${BASH_REMATCH[1]}
  [[ $job =~ $attempt_re ]] && attempt=${BASH_REMATCH[1]}
  now=$EPOCHREALTIME
  echo "take $n $now $attempt" >>"$log"
  # A 404 is a late answer: the lease ran out first (a slow loop), the job went back to another take.
  if (( n % 10 == 0 )); then
    curl -sS -o /dev/null -w "dead $n %{http_code}\n" -X POST \
      "$base/api/queues/$queue/leases/$lease/fail?dead=true&error=bad+job+$n" >>"$log"
  elif (( n % 20 == 5 )) && mkdir "$dir/abandoned-$n" 2>/dev/null; then
    echo "abandon $n $now" >>"$log"
  else
    curl -sS -o /dev/null -w "ack $n %{http_code}\n" -X POST \
      "$base/api/queues/$queue/leases/$lease/ack" >>"$log"
  fi
done
"""


def read_logs(directory: Path) -> list[list[str]]:
    lines = []
    for path in sorted(directory.glob("worker-*.log")):
        lines.extend(line.split() for line in path.read_text().splitlines() if line)
    return lines


async def test_four_curl_loops_take_a_thousand_jobs_and_nothing_is_lost(
    amqp_url: str, iso: Isolation, management: Management, tmp_path: Path
) -> None:
    queue = f"{iso.namespace}:jobs"
    script = tmp_path / "loop.sh"
    script.write_text(LOOP.replace("__LEASE__", str(LEASE_S)))

    async with (
        gateway(amqp_url, iso, management, "--pull", "jobs=curl.job") as gw,
        httpx.AsyncClient(base_url=gw.base, timeout=30) as client,
    ):
        # Published with the library (as an application would), concurrently: the loops are the test.
        started = time.monotonic()
        async with Publisher(amqp_url, namespace=iso.namespace, exchange=iso.exchange) as publisher:
            await asyncio.gather(
                *(publisher.publish("curl.job", {"id": i}, mandatory=True) for i in range(JOBS))
            )
        print(f"published {JOBS} in {time.monotonic() - started:.1f} s")
        started = time.monotonic()

        loops = [
            await asyncio.create_subprocess_exec("bash", str(script), gw.base, queue, str(tmp_path), str(i))
            for i in range(4)
        ]
        try:

            async def all_answered() -> bool:
                answered = (line for line in read_logs(tmp_path) if line[0] in ("ack", "dead"))
                return sum(1 for line in answered if line[2:] == ["200"]) >= JOBS

            await eventually(all_answered, timeout=120, interval=0.5)
            print(f"4 curl loops answered {JOBS} jobs in {time.monotonic() - started:.1f} s")
            # A moment for a job answered twice (which must not happen) to show in the logs.
            await asyncio.sleep(2 * LEASE_S + 1)
        finally:
            (tmp_path / "stop").touch()
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in loops)), timeout=30)

        lines = read_logs(tmp_path)
        assert not [line for line in lines if line[0] == "error"], lines[:20]
        answers = [line for line in lines if line[0] in ("ack", "dead")]
        answered = [line for line in answers if line[2] == "200"]
        late = [line for line in answers if line[2] != "200"]
        assert all(line[2] == "404" for line in late), late  # a late answer is refused, nothing else
        acked = Counter(int(line[1]) for line in answered if line[0] == "ack")
        dead = Counter(int(line[1]) for line in answered if line[0] == "dead")
        # Each job answered exactly once, acked or dead, none lost.
        assert set(acked.values()) == {1} and set(dead.values()) == {1}
        assert sorted([*acked, *dead]) == list(range(JOBS))
        assert sorted(dead) == list(range(0, JOBS, 10))

        # Every abandoned job was taken again, no sooner than its lease ran out, then acked.
        abandoned = {int(line[1]): float(line[2]) for line in lines if line[0] == "abandon"}
        assert sorted(abandoned) == [n for n in range(JOBS) if n % 20 == 5]
        takes: dict[int, list[float]] = defaultdict(list)
        for line in lines:
            if line[0] == "take":
                takes[int(line[1])].append(float(line[2]))
        for n, first in abandoned.items():
            later = [t for t in takes[n] if t > first]
            assert later and min(later) - first >= LEASE_S * 0.9, (n, first, takes[n])
            assert acked[n] == 1
        stats = (await client.get("/api/pull")).json()
        assert stats["expired"] == len(abandoned) + len(late) and stats["leased"] == 0

        # The dead ones are in the dead queue, each with its own reason.
        async def all_dead() -> bool:
            page = (await client.get("/api/dead", params={"error": "bad job", "limit": "1"})).json()
            return bool(page["matching"] == len(dead))

        await eventually(all_dead, timeout=30, interval=1)
        page = (await client.get("/api/dead", params={"error": "bad job", "limit": "200"})).json()
        reasons = {orjson.loads(m["body_preview"])["id"]: m["error"] for m in page["messages"]}
        assert reasons == {n: f"Dead: bad job {n}" for n in dead}, page["messages"][:3]

        async def empty() -> bool:  # every job settled in the broker too (management figures lag)
            rows = {r["name"]: r for r in (await client.get("/api/queues")).json()["queues"]}
            return bool(rows[queue]["messages"] == 0 and rows[queue]["unacked"] == 0)

        await eventually(empty, timeout=30, interval=1)
