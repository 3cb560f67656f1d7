"""The history's outcome arithmetic, without a broker: increases per worker (host and pid), summed per
consumer queue; the first sample a baseline; a new worker counted from its start; a worker missing from
one answer counted in the next."""

from __future__ import annotations

from typing import Any

from event.gateway.history import History


def report(host: str, pid: int, **queues: tuple[int, int, int, int]) -> dict[str, Any]:
    return {
        "host": host,
        "pid": pid,
        "consumers": {
            q: dict(zip(("handled", "failed", "retried", "dead"), counts, strict=True))
            for q, counts in queues.items()
        },
    }


async def test_outcomes_are_increases_per_worker_summed_per_queue() -> None:
    answers: list[list[dict[str, Any]]] = [
        [report("a", 1, q=(100, 10, 8, 2))],  # before the gateway looked: the baseline
        [report("a", 1, q=(103, 11, 10, 2)), report("b", 7, q=(4, 1, 0, 1))],  # b started since
        [report("b", 7, q=(6, 1, 0, 1))],  # a did not answer in time
        [report("a", 1, q=(110, 11, 10, 3)), report("b", 7, q=(6, 1, 0, 1))],  # a's increase lands here
        [report("a", 2, q=(1, 0, 0, 0)), report("b", 7, q=(6, 1, 0, 1))],  # a restarted: a new pid
    ]

    async def rows() -> list[dict[str, Any]]:
        return [{"name": "q", "role": "consumer", "messages": 0, "unacked": 0}]

    async def reports() -> list[dict[str, Any]]:
        return answers.pop(0)

    history = History(rows, reports)
    for _ in range(5):
        await history.sample()
    series = history.as_dict()["series"]["q"]
    assert series["processed"] == [None, 3 + 4, 2, 7, 1]
    assert series["failed"] == [None, 1 + 1, 0, 0, 0]
    assert series["retried"] == [None, 2, 0, 0, 0]
    assert series["dead"] == [None, 1, 0, 1, 0]
    assert series["ready"] == [0, 0, 0, 0, 0]


async def test_a_sample_whose_reports_failed_charts_no_outcomes() -> None:
    async def rows() -> list[dict[str, Any]]:
        return [{"name": "q", "role": "consumer", "messages": 3, "unacked": 1}]

    async def reports() -> list[dict[str, Any]]:
        raise ConnectionError("the broker is away")

    history = History(rows, reports)
    await history.sample()
    assert history.as_dict()["series"]["q"] == {"ready": [3], "unacked": [1], "in": [0.0], "out": [0.0]}
