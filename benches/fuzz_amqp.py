"""Coverage-guided fuzzing of event.amqp's receive path with atheris (optional, not run by CI).

    pip install atheris            # a wheel for CPython 3.11 on Linux
    PYTHONPATH=. python benches/fuzz_amqp.py -max_total_time=60 [-max_len=4096] [corpus_dir]

Each input is fed, in pieces whose sizes come from the input itself, to a connection through the
handshake with channel 1 open (a consumer with prefetch 2 and five mandatory publishes awaiting their
confirms). The oracles are those of tests/unit/test_amqp_hostile.py's hypothesis fuzz: nothing escapes
``data_received``, no call takes more than 2 s, the receive buffer stays within one frame, and a
closed connection names a reply code of the peer's fault (never 541, a fault of ours) and told the
peer so with ``Connection.Close``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    import pamqp.frame
    from pamqp import commands as spec

    from event import amqp, driver
    from event.amqp.url import parse


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()

    def write(self, data: Any) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _m(frame: Any, channel: int = 0) -> bytes:
    return pamqp.frame.marshal(frame, channel)


async def _one(data: bytes) -> None:
    loop = asyncio.get_running_loop()
    connection = amqp.AMQPConnection(parse("amqp://u:p@h/"), name="f", node="f", loop=loop)
    transport = _Transport()
    connection.connection_made(transport)
    for frame in (spec.Connection.Start(mechanisms="PLAIN"), spec.Connection.Tune(0, 4096, 0)):
        connection.data_received(_m(frame))
    connection.data_received(_m(spec.Connection.OpenOk()))
    opening = asyncio.create_task(connection.channel(confirms=True))
    await asyncio.sleep(0)
    connection.data_received(_m(spec.Channel.OpenOk(), 1))
    await asyncio.sleep(0)
    connection.data_received(_m(spec.Confirm.SelectOk(), 1))
    channel = await opening
    qos = asyncio.create_task(channel.basic_qos(2))
    await asyncio.sleep(0)
    connection.data_received(_m(spec.Basic.QosOk(), 1))
    await qos
    consume = asyncio.create_task(channel.basic_consume("q", lambda d: None, consumer_tag="c"))
    await asyncio.sleep(0)
    connection.data_received(_m(spec.Basic.ConsumeOk("c"), 1))
    await consume
    pending = [
        asyncio.create_task(channel.basic_publish(b"x", routing_key="q", mandatory=True)) for _ in range(5)
    ]
    await asyncio.sleep(0)
    at = 0
    while at < len(data) and not connection.is_closed:
        size = 1 + data[at] % 64 * 16  # the input chooses how it is split
        piece = data[at + 1 : at + 1 + size]
        at += 1 + size
        signal.alarm(2)
        connection.data_received(piece)
        signal.alarm(0)
        assert connection.buffered <= connection.payload_max + 8 + len(piece), connection.buffered
    if connection.is_closed:
        exc = connection.closing.exception()
        assert isinstance(exc, driver.ConnectionClosed), exc
        assert exc.reply_code != 541, exc
        await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 1)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def test_one_input(data: bytes) -> None:
    asyncio.run(_one(data))


def _bark(*_: object) -> None:
    raise SystemExit("the receive path took more than 2 s: a hang")


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, _bark)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
