"""Ack batching: every tag acked exactly once, never before its handler finished, never held long."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st
from support import examples

from event.acks import AckLedger, AckTracker


class Broker:
    """The broker's view of one channel's unacked deliveries, read the way RabbitMQ reads acks."""

    def __init__(self, delivered: list[int]) -> None:
        self.unacked = set(delivered)
        self.settled: list[int] = []

    def ack(self, tag: int, multiple: bool) -> None:
        # RabbitMQ looks the named tag up first, multiple or not: an unknown one closes the channel (406)
        assert tag in self.unacked, f"ack of {tag} (multiple={multiple}) names a settled tag: 406"
        hit = {t for t in self.unacked if t <= tag} if multiple else {tag}
        self.settled += hit
        self.unacked -= hit

    def reject(self, tag: int) -> None:
        self.ack(tag, False)


def covered(sent: list[tuple[int, bool]], delivered: list[int]) -> list[int]:
    """Which delivered tags the sent acks settle, the way the broker reads them (with repeats)."""
    broker = Broker(delivered)
    for tag, multiple in sent:
        broker.ack(tag, multiple)
    return broker.settled


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


@settings(max_examples=examples(200), deadline=None)
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


async def test_a_finished_tag_behind_a_slow_one_is_acked_alone_within_the_interval() -> None:
    sent: list[tuple[int, bool]] = []

    def send(tag: int, multiple: bool) -> None:
        sent.append((tag, multiple))

    def reject(tag: int) -> None:
        sent.append((-tag, False))

    tracker = AckTracker(send, reject, batch=100, interval=0.01)
    for tag in (1, 2, 3, 4):
        tracker.delivered(tag)
    tracker.ack(1)
    tracker.ack(3)
    tracker.ack(4)
    assert sent == []  # a partial batch waits for the timer
    await asyncio.sleep(0.05)
    # 1 with the prefix; 3 and 4 alone, since 2 still runs: the broker may send the next two now
    assert sent == [(1, True), (3, False), (4, False)]
    tracker.ack(2)
    tracker.close()
    assert sent[3:] == [(2, True)]  # names 2, covers nothing settled twice
    assert sorted(covered(sent, [1, 2, 3, 4])) == [1, 2, 3, 4]


async def test_finished_tags_behind_a_slow_one_count_towards_the_batch() -> None:
    sent: list[tuple[int, bool]] = []

    def send(tag: int, multiple: bool) -> None:
        sent.append((tag, multiple))

    def reject(tag: int) -> None: ...

    tracker = AckTracker(send, reject, batch=3, interval=60)
    for tag in range(1, 8):
        tracker.delivered(tag)
    for tag in (2, 3):
        tracker.ack(tag)
    assert sent == []
    tracker.ack(4)  # the third finished tag: a batch, though all of it is behind tag 1
    assert sent == [(2, False), (3, False), (4, False)]
    tracker.abandon()


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
    assert sent == [("reject", 2, False)]  # two finished tags wait: the rejected one is settled already
    tracker.flush()
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
        assert all(t in done for t in tags if t <= ledger.ackable_upto)


@settings(max_examples=examples(200), deadline=None)
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


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[int], list[tuple[str, int]]]:
    """Tags delivered, then a random order of endings: ack (with the batch), reject, ack_now, flush."""
    tags, order = draw(completions())
    steps: list[tuple[str, int]] = []
    for tag in order:
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            steps.append(("flush", 0))  # the timer fires
        steps.append((draw(st.sampled_from(["ack", "ack", "ack", "reject", "ack_now"])), tag))
    # Some never finish: a slow handler still running when the history ends.
    running = draw(st.sets(st.sampled_from(tags), max_size=3))
    return tags, [(kind, tag) for kind, tag in steps if tag not in running]


@settings(max_examples=examples(300), deadline=None)
@given(histories(), st.integers(min_value=1, max_value=10))
def test_the_broker_holds_unacked_only_what_runs_plus_less_than_one_batch(
    case: tuple[list[int], list[tuple[str, int]]], batch: int
) -> None:
    """At every moment the broker's unacked tags are the unfinished ones plus fewer than ``batch``
    finished since the last flush; after a flush (the timer), exactly the unfinished ones, whatever the
    order handlers finish in. A multiple-ack never names a tag settled alone (the broker model asserts)."""
    tags, steps = case

    async def scenario() -> None:
        broker = Broker(tags)
        tracker = AckTracker(broker.ack, broker.reject, batch=batch, interval=60)
        for tag in tags:
            tracker.delivered(tag)
        unfinished = set(tags)
        for kind, tag in steps:
            if kind == "flush":
                tracker.flush()
                assert broker.unacked == unfinished
                continue
            unfinished.discard(tag)
            getattr(tracker, kind)(tag)
            assert tracker.ledger.held == len(broker.unacked)  # the ledger knows the broker's count
            assert unfinished <= broker.unacked
            assert len(broker.unacked - unfinished) < batch
        tracker.flush()
        assert broker.unacked == unfinished
        assert sorted(broker.settled) == sorted(set(tags) - unfinished)  # each once
        tracker.abandon()

    asyncio.run(scenario())


async def test_a_full_window_is_acked_at_once_not_after_the_timer() -> None:
    """Slow messages take 3 of a prefetch of 4: the one quick message finishing fills the window, and
    the broker would send nothing more until the timer; so its ack goes at once."""
    sent: list[tuple[int, bool]] = []

    def send(tag: int, multiple: bool) -> None:
        sent.append((tag, multiple))

    def reject(tag: int) -> None: ...

    tracker = AckTracker(send, reject, batch=2, interval=60, window=4)
    for tag in (1, 2, 3, 4):
        tracker.delivered(tag)
    tracker.ack(4)
    assert sent == [(4, False)]
    tracker.abandon()

    roomy = AckTracker(send, reject, batch=2, interval=60, window=8)
    for tag in (1, 2, 3, 4):
        roomy.delivered(tag)
    roomy.ack(4)  # half the window is free: the batch waits for a second tag or the timer
    assert sent == [(4, False)]
    roomy.abandon()
