"""The bus against a real nats-server: dedup, one decision per message, in_progress, stop, replay, KV."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nats.js import api

from multipass import names
from multipass.bus import Ack, Bus, Delivery, Nak, RevisionMismatch, Term, backoff_delay, topology
from multipass.errors import InvalidInput, NotFound, Unavailable
from multipass.v1 import common_pb2
from multipass_dev.local.process import free_port

MODEL = "tiny"
SUBJECT = names.diffusion_pass_subject(MODEL)
DURABLE = names.diffusion_durable(MODEL)


def consumer(bus: Bus, handler, stop: asyncio.Event, **overrides) -> asyncio.Task:
    options = {
        "stream": names.STREAM_PASSES,
        "durable": DURABLE,
        "filter_subject": SUBJECT,
        "handler": handler,
        "ack_wait": 5.0,
        "max_deliver": 5,
        "max_ack_pending": 10,
        "stop": stop,
        "backoff": (0.05,),
        "fetch_timeout": 0.2,
    }
    options.update(overrides)
    return asyncio.create_task(bus.consume(**options))


async def publish_passes(bus: Bus, count: int) -> None:
    for index in range(count):
        await bus.publish(SUBJECT, f"pass-{index}".encode(), msg_id=names.pass_msg_id("J1", index, "base", 0))


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def stream_messages(bus: Bus, stream: str) -> int:
    return (await bus.js.stream_info(stream)).state.messages


# --- publishing --------------------------------------------------------------------------------------


async def test_publish_is_deduplicated_by_msg_id(bus):
    msg_id = names.pass_msg_id("J1", 0, "base", 0)
    first = await bus.publish(SUBJECT, b"a", msg_id=msg_id)
    again = await bus.publish(SUBJECT, b"a", msg_id=msg_id)
    other = await bus.publish(SUBJECT, b"a", msg_id=names.pass_msg_id("J1", 0, "base", 1))
    assert first.stream == names.STREAM_PASSES and not first.duplicate
    assert again.duplicate and again.seq == first.seq
    assert other.seq == first.seq + 1
    assert await stream_messages(bus, names.STREAM_PASSES) == 2


async def test_publish_protobuf_and_headers_reach_the_handler(bus):
    ref = common_pb2.ObjectRef(bucket="multipass-jobs", key="jobs/t/J1/image-0/base.png", size=3)
    await bus.publish(SUBJECT, ref, msg_id="J1:0:base:0", headers={"x-tenant": "t1"})
    stop, seen = asyncio.Event(), []

    async def handler(delivery: Delivery):
        seen.append((delivery.parse(common_pb2.ObjectRef), delivery))
        stop.set()
        return Ack()

    await asyncio.wait_for(consumer(bus, handler, stop), 10)
    ((parsed, delivery),) = seen
    assert parsed == ref
    assert delivery.headers["x-tenant"] == "t1"
    assert delivery.msg_id == "J1:0:base:0"
    assert delivery.subject == SUBJECT
    assert delivery.stream_sequence == 1 and delivery.num_delivered == 1


async def test_publish_requires_a_msg_id(bus):
    with pytest.raises(InvalidInput):
        await bus.publish(SUBJECT, b"x", msg_id="")


async def test_publish_to_a_subject_without_stream_is_unavailable(bus):
    with pytest.raises(Unavailable):
        await bus.publish("nowhere.at.all", b"x", msg_id="a", timeout=1.0)


async def test_connect_to_nothing_is_unavailable_quickly():
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cannot connect"):
        await Bus.connect(f"nats://127.0.0.1:{free_port()}", name="t", connect_timeout=0.5)
    assert time.monotonic() - started < 3


async def test_publish_while_server_down_is_unavailable(nats_server, bus):
    nats_server.stop()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await bus.publish(SUBJECT, b"x", msg_id="J1:0:base:0", timeout=0.3, attempts=2)
    assert time.monotonic() - started < 2


# --- topology ----------------------------------------------------------------------------------------


async def test_topology_is_created_with_the_contract_settings(bus):
    passes = await bus.js.stream_info(names.STREAM_PASSES)
    assert passes.config.retention == api.RetentionPolicy.WORK_QUEUE
    assert passes.config.storage == api.StorageType.FILE
    assert passes.config.subjects == ["multipass.pass.>"]
    for name, subject in (
        (names.STREAM_EVENTS, "multipass.events.>"),
        (names.STREAM_JOB_EVENTS, "multipass.jobevents.>"),
    ):
        info = await bus.js.stream_info(name)
        assert info.config.retention == api.RetentionPolicy.LIMITS
        assert info.config.subjects == [subject]
        assert info.config.max_age == pytest.approx(7 * 24 * 3600)
        assert info.config.duplicate_window == pytest.approx(120)
    for bucket in names.KV_BUCKETS:
        status = await (await bus.js.key_value(bucket)).status()
        assert status.history >= 1


async def test_topology_is_idempotent_concurrently_and_updates_old_config(bus, nats_server):
    await bus.js.update_stream(
        name=names.STREAM_EVENTS,
        subjects=["multipass.events.>"],
        max_age=60.0,
        storage=api.StorageType.FILE,
    )
    others = [await Bus.connect(nats_server.url, name=f"other-{i}") for i in range(3)]
    try:
        await asyncio.gather(bus.ensure_topology(), *(other.ensure_topology() for other in others))
    finally:
        for other in others:
            await other.close()
    info = await bus.js.stream_info(names.STREAM_EVENTS)
    assert info.config.max_age == pytest.approx(7 * 24 * 3600)


async def test_kv_of_unknown_bucket_is_not_found(bus):
    with pytest.raises(NotFound):
        await bus.kv("multipass-nope")


# --- consuming: decisions ----------------------------------------------------------------------------


async def test_ack_removes_the_message_from_the_work_queue(bus):
    await publish_passes(bus, 2)
    stop, seen = asyncio.Event(), []

    async def handler(delivery):
        seen.append(delivery.data)
        if len(seen) == 2:
            stop.set()
        return Ack()

    await asyncio.wait_for(consumer(bus, handler, stop), 10)
    assert seen == [b"pass-0", b"pass-1"]
    state = await bus.consumer_info(names.STREAM_PASSES, DURABLE)
    assert (state.num_pending, state.num_ack_pending, state.lag) == (0, 0, 0)
    assert await stream_messages(bus, names.STREAM_PASSES) == 0


async def test_nak_redelivers_and_counts_deliveries(bus):
    await publish_passes(bus, 1)
    stop, counts = asyncio.Event(), []

    async def handler(delivery):
        counts.append(delivery.num_delivered)
        if delivery.num_delivered < 3:
            return Nak(0.05)
        stop.set()
        return Ack()

    await asyncio.wait_for(consumer(bus, handler, stop), 10)
    assert counts == [1, 2, 3]
    state = await bus.consumer_info(names.STREAM_PASSES, DURABLE)
    assert state.num_ack_pending == 0 and state.num_redelivered == 0


async def test_retriable_error_is_nakked_with_backoff(bus):
    await publish_passes(bus, 1)
    stop, times = asyncio.Event(), []

    async def handler(delivery):
        times.append(time.monotonic())
        if delivery.num_delivered == 1:
            raise Unavailable("object store down")
        stop.set()
        return Ack()

    await asyncio.wait_for(consumer(bus, handler, stop, backoff=(0.4, 5.0)), 10)
    assert len(times) == 2
    assert times[1] - times[0] >= 0.35


async def test_non_retriable_error_is_terminated_and_reported(bus):
    await publish_passes(bus, 2)
    stop, calls, terms = asyncio.Event(), [], []

    async def handler(delivery):
        calls.append(delivery.data)
        if delivery.data == b"pass-0":
            raise InvalidInput("unknown scheduler 'x'")
        stop.set()
        return Ack()

    async def on_term(delivery, reason):
        terms.append((delivery.data, reason))

    await asyncio.wait_for(consumer(bus, handler, stop, ack_wait=1.0, on_term=on_term), 10)
    await asyncio.sleep(1.3)  # past ack_wait: a message left undecided would be pending again
    assert calls == [b"pass-0", b"pass-1"]
    assert terms == [(b"pass-0", "INVALID_ARGUMENT: unknown scheduler 'x'")]
    state = await bus.consumer_info(names.STREAM_PASSES, DURABLE)
    assert (state.num_pending, state.num_ack_pending) == (0, 0)


async def test_handler_term_is_final_and_not_reported_again(bus):
    await publish_passes(bus, 1)
    stop, calls, terms = asyncio.Event(), [], []

    async def handler(delivery):
        calls.append(delivery.num_delivered)
        stop.set()
        return Term("cancelled by owner")

    async def on_term(delivery, reason):
        terms.append(reason)

    await asyncio.wait_for(consumer(bus, handler, stop, ack_wait=1.0, on_term=on_term), 10)
    await asyncio.sleep(1.2)
    state = await bus.consumer_info(names.STREAM_PASSES, DURABLE)
    assert calls == [1] and terms == []
    assert (state.num_pending, state.num_ack_pending) == (0, 0)


async def test_bug_is_logged_nakked_then_terminated_on_the_last_delivery(bus, caplog):
    await publish_passes(bus, 1)
    stop, counts, terms = asyncio.Event(), [], []

    async def handler(delivery):
        counts.append(delivery.num_delivered)
        assert delivery.is_last_delivery == (delivery.num_delivered == 3)
        raise KeyError("oops")

    async def on_term(delivery, reason):
        terms.append((delivery.num_delivered, reason))
        stop.set()

    with caplog.at_level(logging.ERROR, logger="multipass.bus"):
        await asyncio.wait_for(consumer(bus, handler, stop, max_deliver=3, on_term=on_term), 10)
    assert counts == [1, 2, 3]
    assert terms == [(3, "INTERNAL: KeyError: 'oops'")]
    tracebacks = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], KeyError)]
    assert len(tracebacks) == 3
    state = await bus.consumer_info(names.STREAM_PASSES, DURABLE)
    assert (state.num_pending, state.num_ack_pending) == (0, 0)


async def test_handler_returning_no_decision_is_nakked(bus):
    await publish_passes(bus, 1)
    stop, counts = asyncio.Event(), []

    async def handler(delivery):
        counts.append(delivery.num_delivered)
        if delivery.num_delivered == 1:
            return None
        stop.set()
        return Ack()

    await asyncio.wait_for(consumer(bus, handler, stop), 10)
    assert counts == [1, 2]


def test_backoff_grows_with_deliveries_and_repeats_its_last_step():
    steps = (1.0, 2.0, 5.0)
    assert [backoff_delay(steps, n) for n in (1, 2, 3, 4, 9)] == [1.0, 2.0, 5.0, 5.0, 5.0]
    assert backoff_delay((), 3) == 0.0


# --- consuming: time, concurrency, stopping --------------------------------------------------------


async def test_in_progress_keeps_a_long_handler_alive_past_ack_wait(bus):
    await publish_passes(bus, 1)
    stop, calls = asyncio.Event(), []

    async def handler(delivery):
        calls.append(delivery.num_delivered)
        await asyncio.sleep(2.6)  # more than twice ack_wait
        stop.set()
        return Ack()

    # With two slots a redelivery after ack_wait would start a second call at once.
    await asyncio.wait_for(consumer(bus, handler, stop, ack_wait=1.0, concurrency=2), 15)
    assert calls == [1]
    state = await bus.consumer_info(names.STREAM_PASSES, DURABLE)
    assert (state.num_redelivered, state.num_ack_pending, state.num_pending) == (0, 0, 0)


async def test_concurrency_bounds_handlers_in_flight(bus):
    await publish_passes(bus, 6)
    stop, running, peak, done = asyncio.Event(), [0], [0], []

    async def handler(delivery):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.2)
        running[0] -= 1
        done.append(delivery.data)
        if len(done) == 6:
            stop.set()
        return Ack()

    await asyncio.wait_for(consumer(bus, handler, stop, concurrency=3, batch=3), 10)
    assert peak[0] == 3
    assert sorted(done) == [f"pass-{i}".encode() for i in range(6)]


async def test_prefetch_gate_holds_the_next_fetch_until_it_opens(bus):
    await publish_passes(bus, 3)
    stop, gate_open, started, release = asyncio.Event(), asyncio.Event(), [], asyncio.Event()

    async def handler(delivery):
        started.append(delivery.data)
        await release.wait()
        if len(started) == 3:
            stop.set()
        return Ack()

    loop = consumer(bus, handler, stop, concurrency=3, prefetch_gate=gate_open.wait)
    await wait_until(lambda: len(started) == 1)
    await asyncio.sleep(0.5)  # two free slots, but the gate is shut: nothing more is taken
    assert started == [b"pass-0"]
    state = await bus.consumer_info(names.STREAM_PASSES, DURABLE)
    assert (state.num_pending, state.num_ack_pending) == (2, 1)
    gate_open.set()
    await wait_until(lambda: len(started) == 3)
    release.set()
    await asyncio.wait_for(loop, 10)
    assert started == [b"pass-0", b"pass-1", b"pass-2"]


async def test_shut_prefetch_gate_still_fetches_once_the_handlers_ended(bus):
    await publish_passes(bus, 2)
    stop, seen = asyncio.Event(), []

    async def handler(delivery):
        seen.append(delivery.data)
        if len(seen) == 2:
            stop.set()
        return Ack()

    never = asyncio.Event()
    await asyncio.wait_for(consumer(bus, handler, stop, concurrency=2, prefetch_gate=never.wait), 10)
    assert seen == [b"pass-0", b"pass-1"]


async def test_stop_finishes_the_message_in_flight_and_leaves_the_rest(bus):
    await publish_passes(bus, 3)
    stop, seen = asyncio.Event(), []

    async def handler(delivery):
        seen.append(delivery.data)
        stop.set()
        await asyncio.sleep(0.3)  # still finished and acked after stop
        return Ack()

    await asyncio.wait_for(consumer(bus, handler, stop), 10)
    assert seen == [b"pass-0"]
    assert not bus._live  # the pull subscription is gone
    state = await bus.consumer_info(names.STREAM_PASSES, DURABLE)
    assert (state.num_pending, state.num_ack_pending) == (2, 0)

    again, rest = asyncio.Event(), []

    async def finish(delivery):
        rest.append(delivery.data)
        if len(rest) == 2:
            again.set()
        return Ack()

    await asyncio.wait_for(consumer(bus, finish, again), 10)
    assert rest == [b"pass-1", b"pass-2"]


async def test_cancelling_the_loop_hands_the_message_over_at_once(bus):
    await publish_passes(bus, 1)
    started = asyncio.Event()

    async def stuck(delivery):
        started.set()
        await asyncio.Event().wait()

    task = consumer(bus, stuck, asyncio.Event(), ack_wait=30.0)
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    stop, counts = asyncio.Event(), []

    async def handler(delivery):
        counts.append(delivery.num_delivered)
        stop.set()
        return Ack()

    begun = time.monotonic()
    await asyncio.wait_for(consumer(bus, handler, stop, ack_wait=30.0), 10)
    assert counts == [2]
    assert time.monotonic() - begun < 5  # nak'ed, not left to time out after 30 s


async def test_stop_while_waiting_in_a_long_fetch_ends_the_loop_and_loses_nothing(bus):
    """A stop does not wait out the pending pull (every service stop used to take up to a whole fetch
    timeout), and the abandoned pull request swallows nothing: messages published after the stop reach
    the next consumer at once, not after ``ack_wait``."""
    stop, seen = asyncio.Event(), []

    async def handler(delivery):
        seen.append(delivery.data)
        return Ack()

    task = consumer(bus, handler, stop, fetch_timeout=20.0, ack_wait=30.0)
    await asyncio.sleep(0.3)  # the loop is waiting in its fetch, the server holds its pull request
    stop.set()
    await asyncio.wait_for(task, 3)  # well before the 20 s pull would have expired
    assert not bus._live and seen == []

    await publish_passes(bus, 3)
    again = asyncio.Event()

    async def rest(delivery):
        seen.append(delivery.data)
        if len(seen) == 3:
            again.set()
        return Ack()

    begun = time.monotonic()
    await asyncio.wait_for(consumer(bus, rest, again, ack_wait=30.0), 20)
    assert sorted(seen) == [b"pass-0", b"pass-1", b"pass-2"]  # each once
    assert time.monotonic() - begun < 10  # none delivered to the abandoned pull and left to ack_wait


async def test_close_with_a_live_consumer_does_not_stall(nats_server):
    bus = await Bus.connect(nats_server.url, name="closing")
    await bus.ensure_topology()
    task = consumer(bus, None, asyncio.Event(), fetch_timeout=5.0)
    await asyncio.sleep(0.2)  # the loop is waiting in a fetch
    started = time.monotonic()
    await bus.close()
    await asyncio.wait_for(task, 6)
    assert time.monotonic() - started < 2
    assert bus.nc.is_closed


async def test_a_deleted_consumer_is_recreated(bus):
    stop, seen = asyncio.Event(), []

    async def handler(delivery):
        seen.append(delivery.data)
        if len(seen) == 2:
            stop.set()
        return Ack()

    task = consumer(bus, handler, stop)
    await bus.publish(SUBJECT, b"first", msg_id="J1:0:base:0")
    await wait_until(lambda: seen == [b"first"])
    await bus.js.delete_consumer(names.STREAM_PASSES, DURABLE)
    await bus.publish(SUBJECT, b"second", msg_id="J1:1:base:0")
    await asyncio.wait_for(task, 10)
    assert seen == [b"first", b"second"]


async def test_consumer_config_is_updated_not_ignored(bus):
    stop = asyncio.Event()
    stop.set()
    await consumer(bus, None, stop, ack_wait=5.0, max_deliver=5)
    await consumer(bus, None, stop, ack_wait=7.0, max_deliver=9)
    info = await bus.js.consumer_info(names.STREAM_PASSES, DURABLE)
    assert info.config.ack_wait == pytest.approx(7.0)
    assert info.config.max_deliver == 9


async def test_consumer_info_of_unknown_consumer_is_not_found(bus):
    with pytest.raises(NotFound):
        await bus.consumer_info(names.STREAM_PASSES, "nobody")


# --- core NATS ---------------------------------------------------------------------------------------


async def test_core_publish_reaches_subscribers_until_unsubscribed(bus):
    received: list[tuple[str, bytes]] = []

    async def on_cancel(msg):
        received.append((msg.subject, msg.data))
        if msg.data == b"raise":
            raise RuntimeError("callback bug must not end the subscription")

    handle = await bus.subscribe_core(names.CANCEL_ALL, on_cancel)
    await bus.publish_core(names.cancel_subject("J1"), b"raise")
    await bus.publish_core(names.cancel_subject("J2"), b"")
    await wait_until(lambda: len(received) == 2)
    assert received == [("multipass.cancel.J1", b"raise"), ("multipass.cancel.J2", b"")]
    await handle.unsubscribe()
    await handle.unsubscribe()
    await bus.publish_core(names.cancel_subject("J3"), b"")
    await asyncio.sleep(0.1)
    assert len(received) == 2


# --- replay ------------------------------------------------------------------------------------------


async def publish_job_events(bus: Bus, job_id: str, count: int, start: int = 0) -> list[int]:
    acks = [
        await bus.publish(names.job_event_subject(job_id), f"{job_id}-{i}".encode(), msg_id=f"{job_id}:{i}")
        for i in range(start, start + count)
    ]
    return [ack.seq for ack in acks]


async def test_replay_history_after_a_sequence(bus):
    await publish_job_events(bus, "J1", 2)
    seqs = await publish_job_events(bus, "J2", 3)
    await publish_job_events(bus, "J1", 1, start=2)

    stream, subject = names.STREAM_JOB_EVENTS, names.job_event_subject("J2")
    everything = [
        item async for item in bus.replay(stream, subject, start_sequence_after=None, deliver_new=False)
    ]
    assert [seq for seq, _, _ in everything] == seqs
    assert [data for _, data, _ in everything] == [b"J2-0", b"J2-1", b"J2-2"]
    assert everything[0][2]["Nats-Msg-Id"] == "J2:0"

    after_first = [
        item[0] async for item in bus.replay(stream, subject, start_sequence_after=seqs[0], deliver_new=False)
    ]
    assert after_first == seqs[1:]
    nothing = [
        item async for item in bus.replay(stream, subject, start_sequence_after=seqs[-1], deliver_new=False)
    ]
    assert nothing == []
    unknown = [
        item async for item in await bus.replay(stream, names.job_event_subject("J9"), deliver_new=False)
    ]
    assert unknown == []


async def test_replay_of_a_missing_stream_is_not_found(bus):
    with pytest.raises(NotFound, match="NOPE"):
        await anext(aiter(bus.replay("NOPE", "nope.>")))


async def test_replay_then_tail_new_messages(bus):
    first = await publish_job_events(bus, "J1", 2)
    got: list[int] = []
    async with bus.replay(
        names.STREAM_JOB_EVENTS, names.job_event_subject("J1"), start_sequence_after=first[0]
    ) as replay:
        iterator = aiter(replay)
        got.append((await asyncio.wait_for(anext(iterator), 5))[0])
        later = await publish_job_events(bus, "J1", 2, start=2)
        got.append((await asyncio.wait_for(anext(iterator), 5))[0])
        got.append((await asyncio.wait_for(anext(iterator), 5))[0])
    assert got == [first[1], *later]
    assert not bus._live


async def test_replay_of_pass_events_with_a_wildcard(bus):
    for event in ("started", "progress", "completed"):
        await bus.publish(names.event_subject("J5", event), event.encode(), msg_id=f"J5:0:base:0:{event}")
    await bus.publish(names.event_subject("J6", "started"), b"other job", msg_id="J6:0:base:0:started")
    items = [
        item
        async for item in bus.replay(names.STREAM_EVENTS, names.job_events_filter("J5"), deliver_new=False)
    ]
    assert [data for _, data, _ in items] == [b"started", b"progress", b"completed"]


async def test_replay_resumes_across_a_server_restart(bus, nats_server):
    first = await publish_job_events(bus, "J1", 1)
    async with bus.replay(names.STREAM_JOB_EVENTS, names.job_event_subject("J1")) as replay:
        iterator = aiter(replay)
        assert (await asyncio.wait_for(anext(iterator), 5))[0] == first[0]
        await asyncio.to_thread(nats_server.restart)
        await wait_until(lambda: bus.nc.stats["reconnects"] >= 1, timeout=10)
        later = await publish_job_events(bus, "J1", 1, start=1)
        assert (await asyncio.wait_for(anext(iterator), 10))[0] == later[0]


# --- KV ----------------------------------------------------------------------------------------------


async def test_kv_compare_and_set_detects_a_conflicting_writer(bus):
    jobs = await bus.kv(names.KV_JOBS)
    revision = await jobs.create("J1", b"queued")
    newer = await jobs.update("J1", b"running", revision=revision)
    with pytest.raises(RevisionMismatch):
        await jobs.update("J1", b"cancelled", revision=revision)
    assert (await jobs.get("J1")).value == b"running"
    assert newer > revision


async def test_kv_update_retries_conflicts_until_every_writer_lands(bus):
    def increment(current: bytes | None) -> bytes:
        return str(int(current or b"0") + 1).encode()

    async def writer() -> None:
        for _ in range(5):
            await bus.kv_update(names.KV_JOBS, "counter", increment, attempts=100)
            await asyncio.sleep(0)

    await asyncio.gather(*(writer() for _ in range(4)))
    assert (await (await bus.kv(names.KV_JOBS)).get("counter")).value == b"20"

    value, revision = await bus.kv_update(names.KV_JOBS, "counter", lambda current: None)
    assert value == b"20" and revision > 0


async def test_bucket_specs_cover_every_contract_bucket():
    assert {bucket.name for bucket in topology.BUCKETS} == set(names.KV_BUCKETS)
    assert {stream.name for stream in topology.STREAMS} == {
        names.STREAM_PASSES,
        names.STREAM_EVENTS,
        names.STREAM_JOB_EVENTS,
        names.STREAM_ADVISORIES,
    }


async def test_kv_update_recreates_a_deleted_key_and_refuses_bad_keys(bus):
    jobs = await bus.kv(names.KV_JOBS)
    await jobs.put("J1", b"old")
    await jobs.delete("J1")
    seen: list[bytes | None] = []

    def replace(current: bytes | None) -> bytes:
        seen.append(current)
        return b"new"

    value, revision = await bus.kv_update(names.KV_JOBS, "J1", replace)
    assert seen == [None] and value == b"new"
    assert (await jobs.get("J1")).revision == revision
    with pytest.raises(InvalidInput):
        await bus.kv_update(names.KV_JOBS, "bad key*", replace)


# --- unconfirmed acks -----------------------------------------------------------------------------------


class SettleSpy:
    """Records how each decision leaves the connection (request = confirmed, publish = not); can drop acks."""

    def __init__(self, bus: Bus, drop_acks: int = 0):
        self.requested: list[bytes] = []
        self.published: list[bytes] = []
        self.dropped = 0
        self._drop = drop_acks
        request, publish = bus.nc.request, bus.nc.publish

        async def spy_request(subject, payload=b"", *args, **kwargs):
            if subject.startswith("$JS.ACK."):
                self.requested.append(bytes(payload))
            return await request(subject, payload, *args, **kwargs)

        async def spy_publish(subject, payload=b"", *args, **kwargs):
            if subject.startswith("$JS.ACK.") and not kwargs.get("reply", args[0] if args else ""):
                self.published.append(bytes(payload))
                if payload == b"+ACK" and self.dropped < self._drop:
                    self.dropped += 1
                    return None  # lost on the way
            return await publish(subject, payload, *args, **kwargs)

        bus.nc.request, bus.nc.publish = spy_request, spy_publish


async def test_unconfirmed_acks_settle_without_a_round_trip_and_naks_stay_confirmed(bus):
    spy = SettleSpy(bus)
    seen: list[tuple[bytes, int]] = []

    async def handler(delivery: Delivery):
        seen.append((delivery.data, delivery.num_delivered))
        return Nak(0.0) if delivery.data == b"pass-0" and delivery.num_delivered == 1 else Ack()

    await publish_passes(bus, 5)
    stop = asyncio.Event()
    task = consumer(bus, handler, stop, ack_wait=1.0, concurrency=4, batch=4, confirm_acks=False)
    await wait_until(lambda: len(seen) == 6)
    await asyncio.sleep(1.5)  # past ack_wait: nothing comes back
    stop.set()
    await task
    assert sorted(seen) == sorted(
        [(b"pass-0", 1), (b"pass-0", 2)] + [(f"pass-{i}".encode(), 1) for i in range(1, 5)]
    )
    assert spy.published.count(b"+ACK") == 5 and b"+ACK" not in spy.requested
    assert spy.requested.count(b"-NAK") == 1
    state = await bus.consumer_info(names.STREAM_PASSES, DURABLE)
    assert state.num_ack_pending == 0 and state.num_pending == 0
    assert await stream_messages(bus, names.STREAM_PASSES) == 0


async def test_a_lost_unconfirmed_ack_means_one_redelivery_after_ack_wait(bus):
    spy = SettleSpy(bus, drop_acks=1)
    seen: list[int] = []

    async def handler(delivery: Delivery):
        seen.append(delivery.num_delivered)
        return Ack()

    await publish_passes(bus, 1)
    stop = asyncio.Event()
    task = consumer(bus, handler, stop, ack_wait=1.0, confirm_acks=False)
    await wait_until(lambda: len(seen) == 2, timeout=10.0)
    await asyncio.sleep(1.5)
    stop.set()
    await task
    assert spy.dropped == 1 and seen == [1, 2]
    assert await stream_messages(bus, names.STREAM_PASSES) == 0


async def test_acks_are_confirmed_by_default(bus):
    spy = SettleSpy(bus)
    seen: list[bytes] = []

    async def handler(delivery: Delivery):
        seen.append(delivery.data)
        return Ack()

    await publish_passes(bus, 2)
    stop = asyncio.Event()
    task = consumer(bus, handler, stop)
    await wait_until(lambda: len(seen) == 2)
    stop.set()
    await task
    assert spy.requested.count(b"+ACK") == 2 and not spy.published
