"""The throughput benchmark of issue 16 (the seed benchmark), the same as `event bench`.

    python benches/throughput.py [--jobs N] [--routing-keys K] [--window W] [--loop LOOP] [--json]

It runs, against one broker (``$AMQP_URL`` or the local one), each system in its own process and on
messages published for it alone: a WorkerPool and our Publisher against a bare pika
``AsyncioConnection`` client and plain aio-pika, consuming and publishing with confirms, in rotating
turns, and reports each rate with event's ratio to it. Needs ``pip install -e '.[bench]'``. See
docs/benchmarks.md for the figures.
"""

from __future__ import annotations

import sys

from event.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
