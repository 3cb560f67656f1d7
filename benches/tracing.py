"""What tracing costs on the hot path: publish + consume on the in-memory broker, by opentelemetry's presence.

    python benches/tracing.py [--messages N] [--rounds R]

Each round runs, each in a fresh interpreter: event with opentelemetry made unimportable (as if not
installed), and event with the installed opentelemetry-api (no SDK: its no-op spans). Each publishes N
messages with confirms through event.testing.TestBroker to an async no-op consumer and reports messages
per CPU-second of the process (``time.process_time``, steadier than wall time on a shared machine), the
best of three batches. No broker or network is involved: what differs between the columns is event's
own code path. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import sys
if sys.argv[2] == "absent":
    sys.modules["opentelemetry"] = None  # every import of it fails, as when it is not installed
import asyncio, time
from event import Message, Publisher, WorkerPool, tracing
from event.testing import TestBroker

URL = "amqp://nobody:nothing@127.0.0.1:1/"  # never dialled
N = int(sys.argv[1])

async def once():
    pool = WorkerPool(URL, namespace="bench", concurrency=0)
    handled = 0

    @pool.consumer("app.job", prefetch=1000)
    async def job(ctx, msg: Message) -> None:
        nonlocal handled
        handled += 1

    publisher = Publisher(URL, namespace="bench")
    async with TestBroker(pool, publisher) as broker:
        started = time.process_time()
        for i in range(N):
            await publisher.publish("app.job", {"n": i})
        await broker.drain(timeout=300)
        spent = time.process_time() - started
    assert handled == N and tracing.ENABLED is (sys.argv[2] == "installed")
    return spent

async def main():
    print(N / min([await once() for _ in range(3)]))

asyncio.run(main())
"""


def run(messages: int, mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(messages), mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per batch (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both modes (default 3)")
    args = parser.parse_args()
    print(f"{'round':>5}  {'absent msg/CPU-s':>16}  {'installed msg/CPU-s':>19}  ratio")
    for number in range(1, args.rounds + 1):
        absent, installed = run(args.messages, "absent"), run(args.messages, "installed")
        print(f"{number:>5}  {absent:>16,.0f}  {installed:>19,.0f}  {installed / absent:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
