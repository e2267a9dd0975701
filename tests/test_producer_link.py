"""The producers' link to staging (staging/producer_link.py) on 2 fake ranks, without SST: encoders
reach every rank at the same step, staging loss (model stream failed, ended early, no
acknowledgement while the queue is full), replay of exactly the unacknowledged steps, stalls."""

import logging

import numpy as np
import pytest

from fakes import run_ranks
from stagelearn.analytics.encoder import Encoder, VariableModel
from stagelearn.staging.producer_link import POLL_S, STALL_S, StagingLink
from stagelearn.staging.wire import make_report, report_get

SHAPE, BLOCK = (4, 3), (2, 3)  # global field, each rank's block (rank r owns rows 2r..2r+1)
VARIABLES = lambda rank: {"T": (SHAPE, (2 * rank, 0), BLOCK)}  # noqa: E731


class FakeSubscriber:
    """The model stream's reader on rank 0: call ``k`` of ``poll()`` applies ``script[k]`` (a dict
    with any of ``acked``, ``encoder``, ``ended``, ``failed``); calls past the script change nothing."""

    def __init__(self, script):
        self.script, self.calls = list(script), 0
        self.acked, self.ended, self.failed, self.closed = -1, False, False, False

    def poll(self):
        event = self.script[self.calls] if self.calls < len(self.script) else {}
        self.calls += 1
        self.acked = event.get("acked", self.acked)
        self.ended = event.get("ended", self.ended)
        self.failed = event.get("failed", self.failed)
        return event.get("encoder")

    def close(self):
        self.closed = True


class FakeFallback:
    def __init__(self, rank):
        self.path, self.steps, self.written, self.closed = f"fallback/producer.p{rank}.bp", 0, [], False

    def write_step(self, step, blocks, encoder=None):
        self.written.append((step, blocks, encoder))
        self.steps += 1

    def close(self):
        self.closed = True


class FakeLedger:
    def __init__(self):
        self.lines, self.closed = [], False

    def add(self, **line):
        self.lines.append(line)

    def close(self):
        self.closed = True


class FakeClock:
    """``clock()`` and ``sleep()`` of a simulated monotonic clock (sleeping advances it)."""

    def __init__(self):
        self.t, self.slept = 100.0, []

    def clock(self):
        return self.t

    def sleep(self, dt):
        self.slept.append(dt)
        self.t += dt


def block(rank, step):
    return np.full(BLOCK, 10.0 * rank + step, dtype=np.float32)


def make_link(comm, script, *, queue_limit=4, policy="Block", peer_timeout_s=30.0):
    rank = comm.Get_rank()
    clock = FakeClock()
    lost_calls = []
    link = StagingLink(comm, FakeSubscriber(script) if rank == 0 else None, FakeFallback(rank), FakeLedger(),
                       VARIABLES(rank), queue_limit=queue_limit, queue_full_policy=policy,
                       peer_timeout_s=peer_timeout_s, on_lost=lambda: lost_calls.append(True), clock=clock.clock,
                       sleep=clock.sleep)
    return link, clock, lost_calls


def send(link, step, blocked_s=0.0):
    """Put one raw step on the (absent) stream as the producer does after polling."""
    rank = link.rank
    raw = block(rank, step)
    records = [{"var": "T", "raw": raw, "report": make_report(step=step, rank=rank, raw_bytes=raw.nbytes)}]
    link.sent(step, records, {"T": raw}, blocked_s)


def small_encoder(version):
    model = VariableModel((3,), 0.0, 1.0, "pca", mean_=np.arange(3, dtype=np.float32),
                          components_=np.eye(2, 3, dtype=np.float32))
    return Encoder(version=version, trained_until_step=7, raw_fraction=0.1, psnr_db=40.0, variables={"T": model})


def test_new_encoder_reaches_every_rank_at_the_same_step():
    published_at = 2  # rank 0's subscriber sees the encoder at its third poll, i.e. before step 2
    script = [{}] * published_at + [{"encoder": small_encoder(3)}]

    def rank_main(comm):
        link, _, _ = make_link(comm, script)
        switched = []
        for step in range(5):
            if link.poll():
                switched.append((step, link.encoder.version, link.encoder.variables["T"].mean_.tolist()))
            send(link, step)
        return switched

    got = run_ranks(2, rank_main)
    assert got[0] == got[1] == [(published_at, 3, [0.0, 1.0, 2.0])]


@pytest.mark.parametrize("failed, reason", [(True, "staging died"), (False, "closed its model stream before")])
def test_model_stream_failing_or_ending_replays_exactly_the_unacknowledged_steps(caplog, failed, reason):
    last_ack = 0  # staging stored step 0, then its model stream broke at the poll before step 3
    script = [{}, {}, {"acked": last_ack}, {"ended": True, "failed": failed}]

    def rank_main(comm):
        link, _, lost_calls = make_link(comm, script)
        for step in range(3):
            link.poll()
            send(link, step)
        link.poll()  # before step 3: staging is gone
        return link, lost_calls

    with caplog.at_level(logging.ERROR, logger="stagelearn.staging.producer_link"):
        results = run_ranks(2, rank_main)
    expected = [s for s in range(3) if s > last_ack]  # sent, never acknowledged
    for rank, (link, lost_calls) in enumerate(results):
        assert link.staging_lost and lost_calls == [True]
        assert link.acked == last_ack
        assert [step for step, _, _ in link.fallback.written] == expected
        for step, records, encoder in link.fallback.written:
            (rec,) = records
            assert encoder is None and rec["var"] == "T" and rec["start"] == (2 * rank, 0) and rec["shape"] == SHAPE
            np.testing.assert_array_equal(rec["raw"], block(rank, step))
            value = 10.0 * rank + step
            assert report_get(rec["report"], "vmin") == report_get(rec["report"], "vmax") == value
            assert report_get(rec["report"], "n") == np.prod(BLOCK)
        replayed = [line for line in link.ledger.lines if line.get("replayed")]
        assert [line["step"] for line in replayed] == expected
        assert all(line["bytes"] == np.prod(BLOCK) * 4 for line in replayed)
    assert any(reason in r.getMessage() for r in caplog.records)


def test_no_acknowledgement_while_the_queue_is_full_loses_staging_after_peer_timeout(caplog):
    queue_limit, peer_timeout_s = 2, 1.0

    def rank_main(comm):
        link, clock, _ = make_link(comm, [], queue_limit=queue_limit, peer_timeout_s=peer_timeout_s)
        for step in range(queue_limit):  # the queue fills up; staging never acknowledges
            link.poll(wait_for_queue=True)
            send(link, step)
        t0 = clock.t
        link.poll(wait_for_queue=True)  # the next step would exceed the queue: wait, then give up
        return link, clock.t - t0

    with caplog.at_level(logging.ERROR, logger="stagelearn.staging.producer_link"):
        results = run_ranks(2, rank_main)
    _, waited = results[0]
    assert peer_timeout_s < waited <= peer_timeout_s + POLL_S + 1e-9  # rank 0 polled until just past the timeout
    for link, _ in results:
        assert link.staging_lost
        assert [s for s, _, _ in link.fallback.written] == list(range(queue_limit))  # nothing was acknowledged
    assert any(f"acknowledged no step for {peer_timeout_s:g} s" in r.getMessage() for r in caplog.records)


def test_silence_while_the_queue_has_room_is_not_staging_loss():
    queue_limit, peer_timeout_s = 4, 1.0

    def rank_main(comm):
        link, clock, _ = make_link(comm, [], queue_limit=queue_limit, peer_timeout_s=peer_timeout_s)
        for step in range(queue_limit):  # at most queue_limit steps unacknowledged: nothing waits
            clock.t += 10 * peer_timeout_s
            link.poll(wait_for_queue=True)
            send(link, step)
        return link, len(clock.slept)

    for link, n_sleeps in run_ranks(2, rank_main):
        assert not link.staging_lost and link.fallback.written == [] and link.stalls == 0 and n_sleeps == 0


def test_queue_wait_for_an_acknowledgement_counts_a_stall():
    queue_limit, peer_timeout_s = 1, 1.0
    ack_after = 5  # staging acknowledges step 0 at the 5th poll of the wait

    def rank_main(comm):
        script = [{}] + [{}] * (ack_after - 1) + [{"acked": 0}]
        link, clock, _ = make_link(comm, script, queue_limit=queue_limit, peer_timeout_s=peer_timeout_s)
        link.poll(wait_for_queue=True)
        send(link, 0)
        t0 = clock.t
        link.poll(wait_for_queue=True)  # step 1 would be the 2nd unacknowledged step: wait for the ack
        return link, clock.t - t0, len(clock.slept)

    results = run_ranks(2, rank_main)
    _, waited, n_sleeps = results[0]
    assert n_sleeps == ack_after - 1 and waited == pytest.approx(n_sleeps * POLL_S)
    assert waited > STALL_S  # so the wait is a stall, on every rank
    for link, _, _ in results:
        assert not link.staging_lost and link.acked == 0
        assert link.stalls == 1 and link.stall_s == pytest.approx(waited)


def test_end_step_blocking_counts_a_stall_on_that_rank_only():
    blocked = {0: 0.0, 1: 3 * STALL_S}  # seconds rank r's EndStep blocked

    def rank_main(comm):
        link, _, _ = make_link(comm, [])
        link.poll()
        send(link, 0, blocked_s=blocked[comm.Get_rank()])
        return link

    for rank, link in enumerate(run_ranks(2, rank_main)):
        stalled = blocked[rank] > STALL_S
        assert (link.stalls, link.stall_s) == ((1, blocked[rank]) if stalled else (0, 0.0))
        (line,) = link.ledger.lines
        assert line["to"] == "stream" and line["step"] == 0 and line["stall_s"] == (round(blocked[rank], 4) if stalled else 0.0)


def test_close_with_discard_replays_what_staging_never_stored():
    last_ack, n_steps = 1, 4  # with QueueFullPolicy=Discard SST dropped steps 2 and 3: never acknowledged

    def rank_main(comm):
        script = [{}, {}, {"acked": 0}, {"acked": last_ack}]
        link, _, lost_calls = make_link(comm, script, policy="Discard", peer_timeout_s=30.0)
        for step in range(n_steps):
            link.poll()
            send(link, step)
        link.drain()
        link.close("clean", last_step=n_steps - 1, steps_written=n_steps)
        link.close_subscriber()
        return link, lost_calls

    for link, lost_calls in run_ranks(2, rank_main):
        assert not link.staging_lost and lost_calls == []
        assert [s for s, _, _ in link.fallback.written] == [s for s in range(n_steps) if s > last_ack]
        end = link.ledger.lines[-1]
        assert end["event"] == "end" and end["fallback_steps"] == n_steps - 1 - last_ack and end["staging_lost"] is False
        assert link.fallback.closed and link.ledger.closed and link.subscriber is None
