"""The decoding half of the hot path, without a broker: the three frames of one Hutch-shaped message
(``Basic.Deliver``, content header, body) decoded by pamqp (what aiormq uses) and by
``event.frames`` (what our connections use), alternating, in one run.

    python benches/frames.py [--messages N]

Prints microseconds per message for each and the ratio; the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Callable
from typing import Any

import orjson
import pamqp.frame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from event import frames


def hutch_message() -> list[tuple[bytes, bytes]]:
    """The frames of a message as Hutch publishes it and RabbitMQ delivers it, split head/payload."""
    body = orjson.dumps({"user_id": 42, "email": "someone@example.com"})
    properties = spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,
        message_id="7f9c2ba4-e88f-4d1c-9f3a-6b1d2c3e4f5a",
        timestamp=datetime.datetime.now(datetime.UTC).replace(microsecond=0),
        headers={"x-retry-count": 1},
    )
    sent = [
        spec.Basic.Deliver("ctag1.7a2c", 123456, False, "hutch", "app.send_email"),
        ContentHeader(body_size=len(body), properties=properties),
        ContentBody(body),
    ]
    raw = [pamqp.frame.marshal(frame, 1) for frame in sent]
    return [(r[:7], r[7:]) for r in raw]


def per_message_us(
    decode: Callable[[bytes, bytes], Any], message: list[tuple[bytes, bytes]], n: int
) -> float:
    started = time.perf_counter()
    for _ in range(n):
        for head, payload in message:
            decode(head, payload)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    message = hutch_message()

    def pamqp_decode(head: bytes, payload: bytes) -> Any:
        return pamqp.frame.unmarshal(head + payload)

    theirs = ours = 0.0
    for _ in range(5):  # alternate, so a slow spell of a shared machine falls on both
        theirs += per_message_us(pamqp_decode, message, args.messages // 5)
        ours += per_message_us(frames.decode_frame, message, args.messages // 5)
    print(f"pamqp          {theirs / 5:7.2f} µs per message")
    print(f"event.frames   {ours / 5:7.2f} µs per message")
    print(f"ratio          {theirs / ours:7.2f}x")


if __name__ == "__main__":
    main()
