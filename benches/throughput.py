"""The throughput benchmark of issue 10 (the Go library's job benchmark), the same as `event bench`.

    python benches/throughput.py [--jobs N] [--routing-keys K] [--processes N] [--json]

It runs, in one process and against one broker (``$AMQP_URL`` or the local one): a WorkerPool, a plain
aio-pika consumer (the baseline) and a bare batch-acking aiormq consumer (the ceiling), in rotating
turns, and reports each rate with its ratio to ours. See docs/benchmarks.md for the figures.
"""

from __future__ import annotations

import sys

from event.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
