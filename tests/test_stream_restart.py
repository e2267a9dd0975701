"""Checkpoint and restart of the stream codec's learner (``codec.kind: stream``, ``staging.restart_from``).

The staging loop runs on fake ranks with the fake reader, writer and publisher of
tests/test_staging_loop.py. A first run checkpoints its blend-weight learner; a second run restarts
from it and must publish, before it reads a step, exactly the weights the checkpoint stored
(compared with the arrays read back from ``learner.npz``). Checkpoints of one kind are refused by
runs of the other, at ``validate`` time and when staging loads them, with messages naming both.
"""

import json

import numpy as np
import pytest
from mpi4py import MPI

from stagelearn.analytics.config import LearnerConfig
from stagelearn.analytics.learners import make_learner
from stagelearn.analytics.stream_model import MAX_LEVELS, fit_from_statistics
from stagelearn.staging import checkpoint
from stagelearn.staging.config import RunConfig
from stagelearn.staging.errors import ConfigError
from stagelearn.staging.learning import LearnerSet

from test_staging_loop import FakeService, drive


def stream_config(tmp_path, *, steps, **staging):
    return RunConfig.model_validate({
        "run_name": "loop", "output_dir": str(tmp_path),
        "simulation": {"type": "gray_scott", "ranks": 2, "L": 32, "steps": steps, "plotgap": 1},
        "staging": {"ranks": 2, "checkpoint_every": 0, **staging},
        "learner": {"warmup_steps": 3, "publish_every": 4},
        "codec": {"kind": "stream"},
    })


class KeepingPublisher:
    """The fake model channel, keeping every encoder published (arrays included)."""

    def __init__(self):
        self.encoders, self.steps = [], []

    def publish(self, encoder=None, *, ack=None):
        self.steps.append((None if encoder is None else encoder.version, ack))
        if encoder is not None:
            self.encoders.append((encoder.version, encoder.arrays()))

    def close(self, timeout_s=60.0):
        pass


class KeepingService(FakeService):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.fake_publisher = KeepingPublisher()


def drive_keeping(tmp_path, cfg, size):
    from fakes import run_ranks

    def rank_main(comm):
        svc = KeepingService(cfg, comm, tmp_path)
        return svc.run(), svc

    return run_ranks(size, rank_main, timeout_s=60.0)


def read_checkpoint(directory):
    with np.load(directory / "learner.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads((directory / "state.json").read_text()), arrays


@pytest.fixture(scope="module")
def stream_checkpoint(tmp_path_factory):
    """A first stream-codec run of 10 steps (2 staging ranks): its checkpoint and its rank-0 service."""
    root = tmp_path_factory.mktemp("stream_first")
    out = drive(root, stream_config(root, steps=9), 2)
    return root / "checkpoint", out[0][1]


def test_stream_checkpoint_holds_statistics_and_published_weights(stream_checkpoint):
    ckpt, svc = stream_checkpoint
    state, arrays = read_checkpoint(ckpt)
    assert state["format"] == checkpoint.FORMAT and state["step"] == 9 and state["encoder_version"] == 2
    assert state["learners"]["u"]["kind"] == "stream" and state["learners"]["u"]["steps"] == 10
    stats, weights = arrays["u/stats"], arrays["u/published/stream/weights"]
    assert stats.shape == (MAX_LEVELS, 13) and stats.dtype == np.float64 and stats[:, 0].max() > 0
    # the learner's own state at the end of the run, and the weights it would publish, as stored
    est = svc.learning.learners["u"]
    np.testing.assert_array_equal(stats, est.stats)
    assert weights.dtype == np.float32 and weights.tobytes() == est.model_arrays()["stream/weights"].tobytes()
    # a fit of the stored sums (fitted, not the default blend (1, 1, -1) of every level)
    fitted = fit_from_statistics(stats, None)[0][:weights.shape[0]]
    np.testing.assert_allclose(weights, fitted, rtol=0, atol=2.0 ** -16)
    assert not np.all(weights == np.array([1.0, 1.0, -1.0], np.float32))


def test_restarted_stream_run_publishes_the_checkpointed_weights_before_reading(tmp_path, stream_checkpoint):
    ckpt, _ = stream_checkpoint
    _, arrays = read_checkpoint(ckpt)
    out = drive_keeping(tmp_path, stream_config(tmp_path, steps=5, restart_from=str(ckpt)), 2)
    summary, svc0 = out[0]
    assert svc0.published_before_reading == [(3, None)]  # producers code from their first step
    assert summary["published"][0] == {"version": 3, "after_step": -1}
    version, published = svc0.fake_publisher.encoders[0]
    assert version == 3 and sorted(published) == ["u/stream/weights"]
    saved = arrays["u/published/stream/weights"]
    assert published["u/stream/weights"].dtype == saved.dtype
    assert published["u/stream/weights"].tobytes() == saved.tobytes()
    # every rank restored the same statistics, and learning went on from them
    for _, svc in out:
        assert svc.learning.learners["u"].steps == 10 + 6
    assert svc0.fake_writer.steps[0][2] == 3  # stored with the first step


def test_mismatched_checkpoints_are_refused_naming_both_kinds(tmp_path, stream_checkpoint):
    ckpt, _ = stream_checkpoint
    learned = LearnerConfig(warmup_steps=3, publish_every=4, n_components=2)
    # validate time (staging/config.py): the run's codec.kind against the checkpoint's learner
    with pytest.raises(ConfigError, match=r"holds a \['stream'\] learner \(the stream codec's blend weights.*the run "
                                          r"trains a PCA learner"):
        checkpoint.check(str(ckpt), learned, "run.yaml", codec_kind="learned")
    checkpoint.check(str(ckpt), LearnerConfig(), "run.yaml", codec_kind="stream")
    checkpoint.check(str(ckpt), LearnerConfig(), "run.yaml")  # codec.kind not known: left to the run
    # a checkpoint of the learned codec's PCA
    pca_dir = tmp_path / "pca"
    est = make_learner(learned, (4, 4), MPI.COMM_SELF).partial_fit(np.random.default_rng(0).standard_normal((64, 16)))
    checkpoint.save(str(pca_dir), learners={"u": est}, step=4, encoder_version=1, published=[(1, 3)],
                    tile_shapes={"u": (4, 4)}, ranges={"u": (0.0, 1.0)}, seen=5)
    with pytest.raises(ConfigError, match=r"holds a \['pca'\] learner \(a PCA learner.*the run trains the stream "
                                          r"codec's blend weights"):
        checkpoint.check(str(pca_dir), LearnerConfig(), "run.yaml", codec_kind="stream")
    # run time (staging's LearnerSet.restore): each way round
    with pytest.raises(ConfigError, match=r"variable u holds a 'pca' learner .*the run trains 'stream'"):
        LearnerSet(LearnerConfig(), MPI.COMM_SELF, codec_kind="stream").restore(str(pca_dir))
    with pytest.raises(ConfigError, match=r"variable u holds a 'stream' learner .*the run trains 'pca'"):
        LearnerSet(learned, MPI.COMM_SELF, codec_kind="learned").restore(str(ckpt))
    restored = LearnerSet(LearnerConfig(), MPI.COMM_SELF, codec_kind="stream")
    restored.restore(str(ckpt))
    assert restored.checkpointable and restored.learners["u"].kind == "stream"


def test_a_checkpoint_whose_weights_the_learner_would_not_publish_is_refused(tmp_path, stream_checkpoint):
    ckpt, _ = stream_checkpoint
    state, arrays = read_checkpoint(ckpt)
    arrays["u/published/stream/weights"] = arrays["u/published/stream/weights"] + np.float32(2.0 ** -10)
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "learner.npz", **arrays)
    (bad / "state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match=r"variable u: the restored learner would publish stream/weights .*differ by "
                                          r"up to 0.000977"):
        LearnerSet(LearnerConfig(), MPI.COMM_SELF, codec_kind="stream").restore(str(bad))


def test_restored_learners_publish_the_runs_entropy_coder(stream_checkpoint):
    """codec.entropy is the restarted run's setting (not stored in the checkpoint): a learner restored
    from a checkpoint publishes models whose spec says the run's coder, as a fresh one does."""
    ckpt, _ = stream_checkpoint
    for entropy in ("adaptive", "rans"):
        restored = LearnerSet(LearnerConfig(), MPI.COMM_SELF, codec_kind="stream", entropy=entropy)
        restored.restore(str(ckpt))
        model = restored.learners["u"].model()
        assert model.entropy == entropy and model.spec_entry()["stream"]["entropy"] == entropy
