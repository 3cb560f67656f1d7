"""RabbitMQ < 3.12.5: at-least-once dead-lettering stalls for minutes after a node dies, shown without event.

    python benches/cluster_dlx_stall.py [--down S] [--targets N] [--rate N] [--ttl-ms MS] [--wait S] [--json]

Needs the three nodes of cmd/rabbitmq-cluster, all running; it SIGKILLs node 1 and starts it again
(never the machine's own broker). Through node 1, so that node 1 leads both queues (client-local):

- ``<id>.source``: a quorum queue, ``x-dead-letter-strategy: at-least-once``, ``x-overflow:
  reject-publish``, dead-lettering into the fanout exchange ``<id>.dlx``; its messages carry a
  per-message TTL (``--ttl-ms``), so each one is dead-lettered when it expires, as event's park queues do;
- ``<id>.target-1`` .. ``-N`` (``--targets``, 5): quorum queues bound to ``<id>.dlx``, so that every
  dead-lettered message goes to each of them (event's park queues reach one consumer queue or the
  main exchange; several targets only make the race below likelier to be lost in one run).

Through node 2, one message every ``1/--rate`` s is published into source (with confirms) and the
targets are consumed. Ten seconds in, node 1 is killed; ``--down`` seconds later it is started again.
Each message's lateness is its last arrival in a target minus (its confirm + its TTL). The script prints the
longest lateness, how many messages arrived over 30 s late, and the dead-letter worker of source (on
its new leader) as seen a few seconds after the kill: its pending messages and how many target
rejected, and its ``settle_timeout``.

What it shows on 3.10.8 (the broker's code, read from its beams): the new leader of source starts a
new dead-letter worker (rabbit_fifo_dlx_worker), whose client session for target is made at its first
forward, with target's leader as the queue record then names it: node 1, dead, as long as the record
is not yet updated. rabbit_fifo_client's first enqueue asks that node for its machine version by rpc;
``{badrpc, nodedown}`` answers ``reject_publish``, and so does every later try of that session while
node 1 is down. The worker keeps a rejected message pending and sends it again only when its timer
fires (every ``dead_letter_worker_publisher_confirm_timeout``, 180 s by default) and the message is at
least that old: 180 to 360 s. It takes no more messages from source meanwhile (prefetch 32), so
everything else expiring in source waits too. With the default, lateness reaches 3 to 6 minutes; with
``rabbitmqctl eval 'application:set_env(rabbit, dead_letter_worker_publisher_confirm_timeout,
10000).'`` on every node (or cmd/rabbitmq-cluster's advanced.config) it is the node's downtime plus
at most 20 s. RabbitMQ 3.12.5 (rabbitmq-server PR #9221, also backported to 3.11.x) removed the
version rpc: the first enqueue goes to any live member, and nothing is rejected (4.3 has it).
Whether a run hits it is a race: the worker's first forward must come before target's record names
its new leader; with a steady stream of expiring messages it usually does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

SCRIPT = Path(__file__).resolve().parents[1] / "cmd" / "rabbitmq-cluster"
KILL_AFTER_S = 10.0
LATE_S = 30.0


def cluster(*args: str, timeout: float = 300) -> str:
    done = subprocess.run([str(SCRIPT), *args], check=True, capture_output=True, text=True, timeout=timeout)
    return done.stdout


def cluster_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in cluster("env").splitlines() if "=" in line)
    return {key: value for key, value in pairs if not key.startswith("#")}


def worker_of(node: int, queue: str) -> dict[str, Any]:
    """The dead-letter worker of ``queue`` on ``node``: its pendings, the rejected ones, its timeout.

    Read through sys:get_status, whose format_status gives the same map on 3.10 and 4.x.
    """
    expr = (
        'Q = <<"' + queue + '">>, '
        "Ss = [S || {_, P, _, _} <- supervisor:which_children(rabbit_fifo_dlx_sup), "
        "{status, _, _, Items} <- [sys:get_status(P)], L <- Items, is_list(L), "
        '{data, [{"State", S}]} <- L, is_map(S), '
        "element(4, maps:get(queue_ref, S)) =:= Q], "
        "[{maps:size(maps:get(pendings, S)), "
        "length([x || #{rejected := [_ | _]} <- maps:values(maps:get(pendings, S))]), "
        "maps:get(settle_timeout, S)} || S <- Ss]."
    )
    out = cluster("ctl", str(node), "eval", expr).strip()
    # e.g. "[{32,32,180000}]" or "[]" when the worker has not started (or the queue leads elsewhere)
    numbers = [int(n) for n in out.strip("[]{}").replace("}", "").replace("{", "").split(",") if n.strip()]
    if len(numbers) != 3:
        return {"found": False, "raw": out}
    return {"found": True, "pending": numbers[0], "rejected": numbers[1], "settle_timeout_ms": numbers[2]}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    env = cluster_env()
    urls = env["CLUSTER_URLS"].split(",")
    nodes = env["CLUSTER_NODES"].split(",")
    prefix = f"dlx-stall-{uuid.uuid4().hex[:8]}"
    source, dlx = f"{prefix}.source", f"{prefix}.dlx"
    targets = [f"{prefix}.target-{i}" for i in range(1, args.targets + 1)]

    declarer = await aio_pika.connect(urls[0])  # node 1: the leader of both queues
    channel = await declarer.channel()
    exchange = await channel.declare_exchange(dlx, aio_pika.ExchangeType.FANOUT, durable=True)
    for target in targets:
        target_queue = await channel.declare_queue(target, durable=True, arguments={"x-queue-type": "quorum"})
        await target_queue.bind(exchange)
    await channel.declare_queue(
        source,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": dlx,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    await declarer.close()

    confirmed: dict[int, float] = {}
    arrived: dict[tuple[str, int], float] = {}
    worker: dict[str, Any] = {}
    wanted: set[tuple[str, int]] = set()  # known once every publish has ended
    everything = asyncio.Event()
    conn = await aio_pika.connect_robust(urls[1])  # node 2: survives the kill
    try:
        publish_channel = await conn.channel(publisher_confirms=True)
        consume_channel = await conn.channel()
        await consume_channel.set_qos(prefetch_count=100)

        def on_message_of(target: str) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
            async def on_message(message: AbstractIncomingMessage) -> None:
                arrived.setdefault((target, int(message.body)), time.monotonic())
                await message.ack()
                if wanted and wanted <= arrived.keys():
                    everything.set()

            return on_message

        for target in targets:
            queue = await consume_channel.get_queue(target, ensure=False)
            await queue.consume(on_message_of(target))

        async def publish(n: int) -> None:
            body = aio_pika.Message(
                str(n).encode(),
                expiration=args.ttl_ms / 1000,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            for _ in range(60):  # a publish nacked while source elects its leader is sent again
                try:
                    await publish_channel.default_exchange.publish(body, routing_key=source)
                    confirmed[n] = time.monotonic()
                    return
                except Exception:
                    await asyncio.sleep(0.5)

        async def strike() -> None:
            await asyncio.sleep(KILL_AFTER_S)
            os.kill(int(cluster("pid", "1").strip()), signal.SIGKILL)
            await asyncio.sleep(3)  # the new leader is elected and its worker has taken its first batch
            leader = await asyncio.to_thread(leader_of, env, source)
            if leader in nodes:
                worker.update(await asyncio.to_thread(worker_of, nodes.index(leader) + 1, source))
                worker["leader"] = leader
            await asyncio.sleep(max(0.0, args.down - 3))
            await asyncio.to_thread(cluster, "start")

        striking = asyncio.create_task(strike())
        started = time.monotonic()
        publishing: list[asyncio.Task[None]] = []
        while time.monotonic() - started < KILL_AFTER_S + args.down + 10:
            publishing.append(asyncio.create_task(publish(len(publishing) + 1)))
            await asyncio.sleep(1 / args.rate)
        await asyncio.gather(striking, *publishing)
        wanted.update((t, k) for t in targets for k in confirmed)
        if wanted <= arrived.keys():
            everything.set()
        with contextlib.suppress(TimeoutError):  # what has not arrived by then is reported missing
            await asyncio.wait_for(everything.wait(), args.wait)
    finally:
        await conn.close()
        await asyncio.to_thread(cleanup, env, [source, *targets], [dlx])

    whole = [k for k in confirmed if all((t, k) in arrived for t in targets)]
    last = {k: max(arrived[(t, k)] for t in targets) for k in whole}
    lateness = {k: last[k] - confirmed[k] - args.ttl_ms / 1000 for k in whole}
    return {
        "confirmed": len(confirmed),
        "arrived_in_every_target": len(whole),
        "missing_after_wait": len(confirmed) - len(whole),
        "longest_lateness_s": round(max(lateness.values(), default=0.0), 1),
        f"over_{LATE_S:.0f}s_late": sum(1 for v in lateness.values() if v > LATE_S),
        "down_s": args.down,
        "worker_after_kill": worker,
    }


def leader_of(env: dict[str, str], queue: str) -> str:
    import urllib.parse
    import urllib.request

    api = env["CLUSTER_MANAGEMENT_URLS"].split(",")[1]
    request = urllib.request.Request(f"{api}/api/queues/%2F/{urllib.parse.quote(queue, safe='')}")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")  # guest:guest, the cluster's own
    for _ in range(20):
        with urllib.request.urlopen(request, timeout=5) as answer:
            found: dict[str, Any] = json.load(answer)
        if found.get("leader") and found["leader"] != env["CLUSTER_NODES"].split(",")[0]:
            return str(found["leader"])
        time.sleep(0.5)
    return str(found.get("leader"))


def cleanup(env: dict[str, str], queues: list[str], exchanges: list[str]) -> None:
    import urllib.parse
    import urllib.request

    api = env["CLUSTER_MANAGEMENT_URLS"].split(",")[1]
    for name, kind in [*((q, "queues") for q in queues), *((x, "exchanges") for x in exchanges)]:
        request = urllib.request.Request(
            f"{api}/api/{kind}/%2F/{urllib.parse.quote(name, safe='')}", method="DELETE"
        )
        request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except OSError as exc:
            print(f"could not delete {name}: {exc}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--down", type=float, default=10.0, help="seconds node 1 stays down")
    parser.add_argument("--targets", type=int, default=5, help="target queues bound to the dlx")
    parser.add_argument("--rate", type=float, default=50.0, help="messages published per second")
    parser.add_argument("--ttl-ms", type=int, default=5000, help="each message's TTL in source")
    parser.add_argument("--wait", type=float, default=420.0, help="seconds to wait for the last arrivals")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
