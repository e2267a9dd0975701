"""The staging step loop driven without SST: fake ranks (tests/fakes.py), a fake stream reader,
output writer and model publisher in place of the ADIOS2 engines."""

import json
import signal

import numpy as np
import pytest

from fakes import run_ranks
from stagelearn.analytics.config import AnomalyConfig
from stagelearn.staging import signals
from stagelearn.staging.block import ReceivedBlock
from stagelearn.staging.bundle import BlockRecord, pack_records, unpack_records
from stagelearn.staging.config import RunConfig
from stagelearn.staging.errors import ConfigError, Interrupted, PeerLostError
from stagelearn.staging.recorder import StepRecorder
from stagelearn.staging.service import StagingService
from stagelearn.staging.step_tiles import agree_tile_shapes, agree_variables
from stagelearn.staging.wire import make_report

BLOCK = (16, 32)  # each producer block: a 16 x 32 slab of a (16 * n_producers) x 32 field


def field(step, producer):
    """A smooth travelling wave with a little noise: learnable by a few components."""
    y, x = np.mgrid[producer * BLOCK[0]:(producer + 1) * BLOCK[0], 0:BLOCK[1]].astype(np.float32)
    rng = np.random.default_rng(1000 * step + producer)
    return (np.sin(0.2 * x + 0.1 * step) * np.cos(0.15 * y) + 0.01 * rng.standard_normal(BLOCK)).astype(np.float32)


class FakeReader:
    """Serves raw blocks of producer ranks assigned round-robin to this staging rank.

    ``lost_at``: from that step on, producer ``lost_producer`` is gone (``status`` failed on the
    staging rank reading it). ``on_step``: called with the step before it is served.
    """

    def __init__(self, comm, n_steps, n_producers, *, lost_at=None, lost_producer=None, on_step=None):
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.n_steps, self.n_producers = n_steps, n_producers
        self.lost_at, self.lost_producer, self.on_step = lost_at, lost_producer, on_step
        self.mine = [p for p in range(n_producers) if p % self.size == self.rank]
        self.status, self.failed_producers = "ok", set()
        self.step, self.closed, self.variables = 0, False, None

    def read_step(self):
        step = self.step
        if self.on_step is not None:
            self.on_step(step)
        if self.lost_at is not None and step >= self.lost_at and self.lost_producer in self.mine:
            self.status = "failed"
            self.failed_producers.add(self.lost_producer)
            return None
        if step >= self.n_steps:
            self.status = "end"
            return None
        self.step += 1
        blocks = []
        for p in self.mine:
            raw = field(step, p)
            lo, hi = float(raw.min()), float(raw.max())
            report = make_report(step=step, rank=p, raw_bytes=raw.nbytes, sent_bytes=raw.nbytes, n=raw.size,
                                 vmin=lo, vmax=hi, local_psnr_db=np.inf)
            blocks.append(ReceivedBlock(var="u", rank=p, report=report, raw=raw, shape=(BLOCK[0] * self.n_producers, BLOCK[1]),
                                        start=(p * BLOCK[0], 0), count=BLOCK))
        return blocks

    def close(self):
        self.closed = True


class FakeWriter:
    """Records every ``write_step`` of this rank: (step, [(var, producer rank)], encoder version or None)."""

    def __init__(self):
        self.steps, self.closed, self.coded = [], False, []

    def write_step(self, step, blocks, *, encoder=None, summary=None):
        self.steps.append((step, sorted((b.var, b.rank) for b in blocks), None if encoder is None else encoder.version))
        self.coded.append([b.raw is None and b.payload is not None for b in blocks])

    def close(self):
        self.closed = True


class FakePublisher:
    """Records the model channel's steps: (encoder version or None, trained until step, ack)."""

    def __init__(self):
        self.steps, self.closed = [], False

    def publish(self, encoder=None, *, ack=None):
        self.steps.append((None if encoder is None else encoder.version,
                           None if encoder is None else encoder.trained_until_step, ack))

    def close(self, timeout_s=60.0):
        self.closed = True


def make_config(tmp_path, *, steps=11, n_producers=2, warmup=3, every=4, staging_ranks=2, **staging):
    return RunConfig.model_validate({
        "run_name": "loop", "output_dir": str(tmp_path),
        "simulation": {"type": "gray_scott", "ranks": n_producers, "L": 32, "steps": steps, "plotgap": 1},
        "staging": {"ranks": staging_ranks, "checkpoint_every": 0, **staging},
        "learner": {"warmup_steps": warmup, "publish_every": every, "n_components": 4},
        "codec": {"kind": "learned"},
    })


class FakeService(StagingService):
    """The real loop with fake channels."""

    def __init__(self, cfg, comm, run_dir, **reader_kw):
        super().__init__(cfg, comm, run_dir)
        self.reader_kw = reader_kw
        self.fake_writer, self.fake_publisher = FakeWriter(), FakePublisher()

    def open_reader(self):
        self.published_before_reading = list(self.fake_publisher.steps)
        return FakeReader(self.comm, self.cfg.simulation.steps + 1, self.cfg.simulation.ranks, **self.reader_kw)

    def open_writer(self):
        return self.fake_writer

    def open_publisher(self):
        return self.fake_publisher


def drive(tmp_path, cfg, size, **reader_kw):
    """Run the loop on ``size`` fake ranks; return (result or exception, service) per rank."""
    def rank_main(comm):
        svc = FakeService(cfg, comm, tmp_path, **reader_kw)
        try:
            return svc.run(), svc
        except (PeerLostError, Interrupted) as exc:
            return exc, svc

    return run_ranks(size, rank_main, timeout_s=60.0)


def test_steps_stored_in_order_and_acknowledged(tmp_path):
    cfg = make_config(tmp_path, steps=9, n_producers=3)
    out = drive(tmp_path, cfg, 2)
    summary = out[0][0]
    assert out[1][0] is None and summary["end"] == "clean"
    assert summary["steps_received"] == 10 and summary["steps_lost"] == 0
    for rank, (_, svc) in enumerate(out):
        w = svc.fake_writer
        assert [s for s, _, _ in w.steps] == list(range(10)) and w.closed
        own = [p for p in range(3) if p % 2 == rank]  # each rank wrote its own blocks, no gather
        assert all(blocks == [("u", p) for p in own] for _, blocks, _ in w.steps)
        assert svc.reader.closed
    acks = [a for _, _, a in out[0][1].fake_publisher.steps if a is not None]
    assert acks == list(range(10)) and out[0][1].fake_publisher.closed
    assert out[1][1].fake_publisher.steps == []  # only rank 0 talks on the model stream
    ledger = [json.loads(line) for line in (tmp_path / "ledger" / "staging.jsonl").read_text().splitlines()]
    assert [(e["step"], e["rank"]) for e in ledger if "step" in e] == [(s, r) for s in range(10) for r in range(3)]
    assert ledger[-1]["event"] == "end" and ledger[-1]["status"] == "clean"
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["steps_received"] == 10 and progress["last_step"] == 9
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert [r["step"] for r in steps] == list(range(10)) and all(r["producer_blocks"] == 3 for r in steps)
    assert json.loads((tmp_path / "staging_summary.json").read_text())["steps_received"] == 10


def test_encoder_published_after_warmup_then_every(tmp_path):
    cfg = make_config(tmp_path, steps=11, warmup=3, every=4)
    out = drive(tmp_path, cfg, 2)
    summary, svc0 = out[0]
    # published after 3, 7 and 11 steps seen: trained until steps 2, 6, 10
    published = [(v, t) for v, t, _ in svc0.fake_publisher.steps if v is not None]
    assert published == [(1, 2), (2, 6), (3, 10)]
    assert summary["published"] == [{"version": v, "after_step": t} for v, t in published]
    assert summary["encoder_versions"] == 3
    stored = [(s, v) for s, _, v in svc0.fake_writer.steps if v is not None]
    assert stored == [(2, 1), (6, 2), (10, 3)]  # each version stored once, with the step it was published after
    assert all(v is None for _, _, v in out[1][1].fake_writer.steps)  # rank 0 alone writes encoders
    # the encoder and its acknowledgement travel in one model-stream step
    assert [(v, a) for v, _, a in svc0.fake_publisher.steps if v is not None] == [(1, 2), (2, 6), (3, 10)]


def test_producer_lost_mid_run_names_missing_steps(tmp_path):
    cfg = make_config(tmp_path, steps=9)
    out = drive(tmp_path, cfg, 2, lost_at=5, lost_producer=1)
    for exc, svc in out:
        assert isinstance(exc, PeerLostError) and svc.end_status == "producer_lost"
        assert not svc.reader.closed  # a stream whose writer died is left to the process exit
        assert [s for s, _, _ in svc.fake_writer.steps] == list(range(5)) and svc.fake_writer.closed
    summary = json.loads((tmp_path / "staging_summary.json").read_text())
    assert summary["end"] == "producer_lost"
    assert summary["missing"] == {"ranks": [0, 1], "steps": [5, 9], "n_steps": 5,
                                  "last_step_by_rank": {"0": 4, "1": 4}}
    assert "[5, 9]" in str(out[0][0]) and "[5, 9]" in str(out[1][0])
    acks = [a for _, _, a in out[0][1].fake_publisher.steps if a is not None]
    assert acks == list(range(5))


def test_interruption_ends_at_a_step_boundary(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, steps=9)

    def on_step(step):
        if step == 4:
            monkeypatch.setattr(signals, "_pending", int(signal.SIGINT))

    out = drive(tmp_path, cfg, 2, on_step=on_step)
    for exc, svc in out:
        assert isinstance(exc, Interrupted) and exc.signum == signal.SIGINT
        assert [s for s, _, _ in svc.fake_writer.steps] == [0, 1, 2, 3] and svc.reader.closed
    summary = json.loads((tmp_path / "staging_summary.json").read_text())
    assert summary["end"] == "interrupted" and summary["steps_received"] == 4
    assert summary["missing"]["steps"] == [4, 9]


def test_in_transit_codes_blocks_and_saves_the_reference(tmp_path):
    cfg = make_config(tmp_path, steps=7, warmup=3, every=100, mode="in_transit", stream="sim.bp")
    out = drive(tmp_path, cfg, 2)
    summary, svc0 = out[0]
    assert summary["end"] == "clean" and summary["mode"] == "in_transit"
    assert summary["reference"] == {"variable": "u", "step": 7}
    full = np.concatenate([field(7, p) for p in range(2)])
    np.testing.assert_array_equal(np.load(tmp_path / "reference_u_step7.npy"), full)
    for _, svc in out:  # raw (stored losslessly) until the encoder of step 2, coded from step 3 on
        assert [all(c) for c in svc.fake_writer.coded] == [False] * 3 + [True] * 5
        assert svc.fake_publisher.steps == []  # no model stream in transit
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert [r["encoder_version"] for r in steps] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert all(r["sent_bytes"] < r["raw_bytes"] for r in steps[3:])


def test_restart_publishes_the_restored_model_before_reading(tmp_path):
    first = make_config(tmp_path / "a", steps=9, warmup=3, every=4)
    drive(tmp_path / "a", first, 2)
    state = json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 9 and state["encoder_version"] == 2
    second = make_config(tmp_path / "b", steps=5, warmup=3, every=4, restart_from=str(tmp_path / "a" / "checkpoint"))
    out = drive(tmp_path / "b", second, 2)
    summary, svc0 = out[0]
    assert svc0.published_before_reading == [(3, 9, None)]  # producers code from their first step
    assert summary["published"][0] == {"version": 3, "after_step": -1}
    assert svc0.fake_writer.steps[0] == (0, [("u", 0)], 3)  # stored with the first step
    assert [v for _, _, v in svc0.fake_writer.steps[1:]] == [None, None, 4, None, None]  # publish_every counts on


def test_block_records_round_trip():
    recs = [BlockRecord(var="u", rank=3, report=make_report(step=7, rank=3, raw_bytes=10, sent_bytes=5, n=4)),
            BlockRecord(var="v", rank=0, report=make_report(step=7, rank=0, n=4),
                        anomaly=np.array([[1, 5.0, 1, 0], [2, 1.0, 0, 1]]), err_hist=np.arange(4.0),
                        placement={"start": [0, 8], "block_shape": [8, 8], "tile_shape": [4, 4]})]
    back = unpack_records(pack_records(recs))
    assert [(r.var, r.rank, r.step, r.placement) for r in back] == [(r.var, r.rank, r.step, r.placement) for r in recs]
    np.testing.assert_array_equal(back[1].anomaly, recs[1].anomaly)
    np.testing.assert_array_equal(back[1].err_hist, recs[1].err_hist)
    assert back[0].anomaly is None and back[0].err_hist is None
    with pytest.raises(ValueError, match="block records"):
        unpack_records(b"XXXX" + bytes(16))


def test_recorder_logs_flagged_tiles_at_their_global_origin(tmp_path):
    rec = StepRecorder(str(tmp_path), AnomalyConfig(enabled=True))
    hist = np.zeros(96)
    hist[40] = 5.0
    where = {"start": [8, 16], "block_shape": [8, 16], "tile_shape": [4, 4]}  # a 2 x 4 tile grid
    records = [BlockRecord(var="u", rank=1, report=make_report(step=3, rank=1, n=128, vmin=-1.0, vmax=2.0),
                           anomaly=np.array([[5, 12.5, 1, 0], [6, 9.0, 0, 1], [7, 2.0, 0, 0]]), err_hist=hist,
                           placement=where),
               BlockRecord(var="u", rank=0, report=make_report(step=3, rank=0, n=128, vmin=-3.0, vmax=1.0))]
    assert rec.account(records) == 3
    rec.stored(3, records)
    rec.close_log()
    lines = (tmp_path / "anomalies.csv").read_text().splitlines()
    assert lines == ["step,variable,rank,tile,origin,score,status", "3,u,1,5,12 20,12.500,flagged",
                     "3,u,1,6,12 24,9.000,persistent"]
    assert rec.ranges == {"u": (-3.0, 2.0)} and rec.hist_steps == 1 and rec.error_hists["u"].total > 0
    assert rec.last_step == 3 and sorted(rec.accounts.rows[3]) == [(0, "u"), (1, "u")]


def test_tile_shapes_are_agreed_through_rank_0():
    def rank_main(comm):
        blocks = FakeReader(comm, 1, 2).read_step()
        names = agree_variables(comm, blocks)
        shapes = agree_tile_shapes(comm, blocks, names)
        with pytest.raises(ConfigError, match="tile_shape"):
            agree_tile_shapes(comm, blocks, names, (4, 4, 4), "run.yaml")
        with pytest.raises(ConfigError, match="'v' is not on the stream"):
            agree_tile_shapes(comm, blocks, ["v"])
        return names, shapes

    assert run_ranks(2, rank_main) == [(["u"], {"u": (8, 8)})] * 2
