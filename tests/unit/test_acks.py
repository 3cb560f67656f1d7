"""Ack batching: every tag acked exactly once, never before its handler finished, never held long."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from event.acks import AckLedger, AckTracker


def covered(sent: list[tuple[int, bool]], delivered: list[int]) -> list[int]:
    """Which delivered tags the sent acks settle, the way the broker reads them (with repeats)."""
    settled: list[int] = []
    outstanding = list(delivered)
    for tag, multiple in sent:
        hit = [t for t in outstanding if (t <= tag if multiple else t == tag)]
        assert hit, f"ack of {tag} (multiple={multiple}) settles nothing: the broker would close the channel"
        settled += hit
        outstanding = [t for t in outstanding if t not in hit]
    return settled


@st.composite
def completions(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    count = draw(st.integers(min_value=1, max_value=60))
    start = draw(st.integers(min_value=1, max_value=1000))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=3), min_size=count, max_size=count))
    tags, tag = [], start
    for gap in gaps:
        tags.append(tag)
        tag += gap
    order = draw(st.permutations(tags))
    return tags, list(order)


@settings(max_examples=200, deadline=None)
@given(completions(), st.integers(min_value=1, max_value=10))
def test_every_tag_is_acked_exactly_once_and_only_after_it_finished(
    case: tuple[list[int], list[int]], batch: int
) -> None:
    tags, order = case

    async def scenario() -> None:
        sent: list[tuple[int, bool]] = []
        finished: set[int] = set()

        def send(tag: int, multiple: bool) -> None:
            # at the moment an ack leaves, everything it settles must have finished
            for t in tags:
                if (t <= tag) if multiple else (t == tag):
                    assert t in finished or any(s[0] >= t and s[1] for s in sent), t
            sent.append((tag, multiple))

        def reject(tag: int) -> None:
            raise AssertionError("no rejects in this scenario")

        tracker = AckTracker(send, reject, batch=batch, interval=0.001)
        for tag in tags:
            tracker.delivered(tag)
        for tag in order:
            finished.add(tag)
            tracker.ack(tag)
        await asyncio.sleep(0.01)  # the flush interval passes
        settled = covered(sent, tags)
        assert sorted(settled) == tags  # all of them, each once
        tracker.abandon()

    asyncio.run(scenario())


async def test_a_finished_tag_behind_a_slow_one_waits_then_goes_at_shutdown() -> None:
    sent: list[tuple[int, bool]] = []

    def send(tag: int, multiple: bool) -> None:
        sent.append((tag, multiple))

    def reject(tag: int) -> None:
        sent.append((-tag, False))

    tracker = AckTracker(send, reject, batch=1, interval=0.001)
    for tag in (1, 2, 3):
        tracker.delivered(tag)
    tracker.ack(1)
    tracker.ack(3)
    await asyncio.sleep(0.01)
    assert sent == [(1, True)]  # 3 may not be covered while 2 runs
    tracker.close()  # 2 never finished (handed back); 3 goes alone
    assert sent == [(1, True), (3, False)]


async def test_the_timer_flushes_a_partial_batch() -> None:
    sent: list[tuple[int, bool]] = []

    def send(tag: int, multiple: bool) -> None:
        sent.append((tag, multiple))

    def reject(tag: int) -> None: ...

    tracker = AckTracker(send, reject, batch=100, interval=0.02)
    for tag in (1, 2):
        tracker.delivered(tag)
    tracker.ack(1)
    tracker.ack(2)
    assert sent == []
    await asyncio.sleep(0.06)
    assert sent == [(2, True)]


async def test_reject_goes_out_at_once_and_lets_the_prefix_move_on() -> None:
    sent: list[tuple[str, int, bool]] = []

    def send(tag: int, multiple: bool) -> None:
        sent.append(("ack", tag, multiple))

    def reject(tag: int) -> None:
        sent.append(("reject", tag, False))

    tracker = AckTracker(send, reject, batch=3, interval=1)
    for tag in (1, 2, 3):
        tracker.delivered(tag)
    tracker.ack(1)
    tracker.reject(2)
    tracker.ack(3)
    assert sent == [("reject", 2, False), ("ack", 3, True)]


async def test_an_abandoned_tracker_sends_nothing() -> None:
    sent: list[int] = []

    def send(tag: int, multiple: bool) -> None:
        sent.append(tag)

    def reject(tag: int) -> None:
        sent.append(-tag)

    tracker = AckTracker(send, reject, batch=1, interval=0.001)
    tracker.delivered(1)
    tracker.abandon()
    tracker.ack(1)
    tracker.reject(1)
    tracker.close()
    assert sent == []


async def test_a_failing_send_abandons_the_tracker() -> None:
    def send(tag: int, multiple: bool) -> None:
        raise ConnectionError("channel closed")

    def reject(tag: int) -> None: ...

    tracker = AckTracker(send, reject, batch=1, interval=0.001)
    tracker.delivered(1)
    tracker.ack(1)
    assert not tracker.alive


@given(st.lists(st.integers(min_value=1, max_value=40), unique=True, min_size=1))
def test_ledger_prefix_never_passes_an_unfinished_tag(finished_order: list[int]) -> None:
    ledger = AckLedger()
    tags = sorted(finished_order)
    for tag in tags:
        ledger.delivered(tag)
    done: set[int] = set()
    for tag in finished_order:
        ledger.finish(tag)
        done.add(tag)
        assert all(t in done for t in tags if t <= ledger.ready_upto)


@settings(max_examples=200, deadline=None)
@given(completions(), st.integers(min_value=1, max_value=10), st.data())
def test_tags_settled_alone_are_covered_by_a_multiple_ack_but_never_named_by_one(
    case: tuple[list[int], list[int]], batch: int, data: st.DataObject
) -> None:
    tags, order = case
    alone = set(data.draw(st.lists(st.sampled_from(tags), unique=True)))

    async def scenario() -> None:
        sent: list[tuple[int, bool]] = []

        def send(tag: int, multiple: bool) -> None:
            sent.append((tag, multiple))

        def reject(tag: int) -> None:
            sent.append((tag, False))

        tracker = AckTracker(send, reject, batch=batch, interval=0.001)
        for tag in tags:
            tracker.delivered(tag)
        for n, tag in enumerate(order):
            if tag not in alone:
                tracker.ack(tag)
            elif n % 2:
                tracker.reject(tag)
            else:
                tracker.ack_now(tag)
        await asyncio.sleep(0.01)
        tracker.close()
        assert sorted(covered(sent, tags)) == tags  # each once; no ack names a settled tag

    asyncio.run(scenario())


async def test_ack_now_goes_out_alone_before_the_batch() -> None:
    sent: list[tuple[int, bool]] = []

    def send(tag: int, multiple: bool) -> None:
        sent.append((tag, multiple))

    def reject(tag: int) -> None: ...

    tracker = AckTracker(send, reject, batch=100, interval=1)
    for tag in (1, 2, 3):
        tracker.delivered(tag)
    tracker.ack_now(2)
    assert sent == [(2, False)]
    tracker.ack(1)
    tracker.ack(3)
    tracker.flush()
    assert sent == [(2, False), (3, True)]  # covers 2, does not name it
