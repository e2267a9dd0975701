"""Tile autoencoder: shapes, quantized latents, weight transfer without pickle, online training
on one rank and on two gloo ranks (identical weights, counted communication)."""

import io
import json
import math

import numpy as np
import pytest
import torch
from mpi4py import MPI

from stagelearn.analytics.ae_training import AETrainer
from stagelearn.analytics.autoencoder import (AEFormatError, AESpec, TileAutoencoder, from_arrays, named_arrays,
                                              quantize_latents, spec_from_data, ste_quantize, validate_spec)
from stagelearn.analytics.config import LearnerConfig
from stagelearn.analytics.learners import make_learner
from stagelearn.analytics.tiling import to_tiles


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one intra-op thread is fastest and keeps timings stable on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_field(shape, phase=0.0):
    """Smooth periodic test field, float32, values around 3."""
    axes = np.meshgrid(*[np.linspace(0, 2 * np.pi, n, endpoint=False) for n in shape], indexing="ij")
    f = 3.0 + sum(np.sin((k + 1) * a + phase * (k + 1)) / (k + 1) for k, a in enumerate(axes))
    return f.astype(np.float32)


@pytest.mark.parametrize("tile_shape", [(16,), (7,), (8, 8), (5, 3), (4, 4, 4), (4, 4, 1)])
def test_shapes_codes_and_round_trip(tile_shape):
    rng = np.random.default_rng(0)
    spec = AESpec(tile_shape, channels=(4, 8), latent_dim=6, latent_bits=6, offset=1.0, scale=2.0)
    model = TileAutoencoder(spec)
    d = math.prod(tile_shape)
    tiles = rng.normal(1.0, 2.0, size=(37, d)).astype(np.float32)
    codes, scales = model.encode_latents(tiles)
    assert codes.dtype == np.int32 and codes.shape == (37, 6)
    assert scales.dtype == np.float32 and scales.shape == (37,) and np.all(scales > 0)
    assert np.abs(codes).max() <= 2 ** 5 - 1
    assert np.all(np.abs(codes).max(axis=1) == 2 ** 5 - 1)  # the largest latent of each tile uses the full range
    codes2, scales2 = model.encode_latents(tiles)
    np.testing.assert_array_equal(codes, codes2)
    np.testing.assert_array_equal(scales, scales2)
    out = model.decode_latents(codes, scales)
    assert out.dtype == np.float32 and out.shape == (37, d)
    np.testing.assert_array_equal(model.reconstruct(tiles), out)
    assert model(torch.from_numpy(tiles)).shape == (37, d)
    empty = model.encode_latents(np.zeros((0, d), np.float32))
    assert empty[0].shape == (0, 6) and model.decode_latents(*empty).shape == (0, d)
    with pytest.raises(ValueError, match="shape"):
        model.encode_latents(tiles[:, :-1])


def test_quantization_error_and_straight_through_gradient():
    z = torch.randn(50, 8, requires_grad=True)
    codes, scales = quantize_latents(z, 8)
    assert torch.all(codes.abs() <= 127) and torch.equal(codes, codes.round())
    assert torch.all((codes * scales[:, None] - z).abs() <= scales[:, None] / 2 * (1 + 1e-6))
    z_hat = ste_quantize(z, 8)
    torch.testing.assert_close(z_hat, codes * scales[:, None])
    (z_hat * torch.arange(8.0)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(8.0).expand(50, 8))
    codes0, scales0 = quantize_latents(torch.zeros(3, 4), 4)  # all-zero latents: finite, positive scale
    assert torch.all(codes0 == 0) and torch.all(scales0 > 0)


def test_spec_json_round_trip_and_validation():
    spec = spec_from_data(smooth_field((8, 8, 8)).reshape(-1, 64), (4, 4, 4))
    assert abs(spec.offset - 3.0) < 0.1 and spec.scale > 0
    assert validate_spec(json.loads(json.dumps(spec.to_dict()))) == spec
    good = spec.to_dict()
    bad = {"format": "other/1", "tile_shape": [4, 0, 4], "channels": [], "latent_dim": 0, "latent_bits": 1,
           "offset": float("nan"), "scale": -1.0}
    for key, value in bad.items():
        with pytest.raises(AEFormatError, match=key):
            validate_spec(dict(good, **{key: value}))
    with pytest.raises(AEFormatError, match="unexpected"):
        validate_spec(dict(good, activation="relu"))
    with pytest.raises(AEFormatError, match="missing"):
        validate_spec({k: v for k, v in good.items() if k != "scale"})
    with pytest.raises(ValueError):  # AEFormatError is a ValueError
        AESpec((4, 4, 4, 4))


def test_weight_transfer_is_bit_identical_and_pickle_free():
    spec = AESpec((4, 4, 4), channels=(8, 16), offset=3.0, scale=0.7)
    trainer = AETrainer(spec, iterations_per_step=3, batch_size=64)
    tiles = to_tiles(smooth_field((16, 16, 16)), (4, 4, 4))
    model = trainer.partial_fit(tiles).model
    buf = io.BytesIO()
    np.savez(buf, **named_arrays(model))
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays.values())
    rebuilt = from_arrays(json.loads(json.dumps(spec.to_dict())), arrays)
    for a, b in zip(model.encode_latents(tiles), rebuilt.encode_latents(tiles)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.reconstruct(tiles), rebuilt.reconstruct(tiles))


def test_from_arrays_rejects_bad_weights():
    spec = AESpec((8, 8), channels=(4, 8))
    arrays = named_arrays(TileAutoencoder(spec))
    name = next(iter(arrays))
    nan = arrays[name].copy()
    nan.flat[0] = np.nan
    cases = {
        "unexpected": dict(arrays, extra=np.zeros(3, np.float32)),
        "missing": {k: v for k, v in arrays.items() if k != name},
        "shape": dict(arrays, **{name: arrays[name][..., :1].copy()}),
        "float32": dict(arrays, **{name: arrays[name].astype(np.float64)}),
        "NaN": dict(arrays, **{name: nan}),
    }
    for message, bad in cases.items():
        with pytest.raises(AEFormatError, match=message):
            from_arrays(spec, bad)
    with pytest.raises(AEFormatError, match="latent_dim"):
        from_arrays(dict(spec.to_dict(), latent_dim=-1), arrays)


@pytest.mark.parametrize("mode", ["ddp", "local_sgd"])
def test_training_beats_untrained_model(mode):
    tile_shape = (4, 4, 4)
    test = to_tiles(smooth_field((24, 24, 24), phase=0.5), tile_shape)
    spec = spec_from_data(test, tile_shape, channels=(8, 16))
    trainer = AETrainer(spec, mode=mode, lr=1e-2, batch_size=128, iterations_per_step=40, sync_every=8)
    mse_untrained = np.mean((trainer.model.reconstruct(test) - test) ** 2)
    for phase in np.linspace(0, 6, 5):
        trainer.partial_fit(to_tiles(smooth_field((24, 24, 24), phase), tile_shape))
    mse_trained = np.mean((trainer.model.reconstruct(test) - test) ** 2)
    assert mse_trained < 0.2 * mse_untrained
    assert trainer.n_samples_seen_ == 5 * 216 and trainer.n_iter_ == 200 and np.isfinite(trainer.loss_)


class ListBuffer:
    """Minimal replay buffer: keeps everything, samples uniformly."""

    def __init__(self):
        self.tiles, self.calls = np.zeros((0, 16), np.float32), []

    def add(self, tiles, sources, step):
        self.tiles = np.concatenate([self.tiles, tiles])
        self.calls.append((len(tiles), sources, step))

    def sample(self, n, rng):
        return self.tiles[rng.integers(0, len(self.tiles), min(n, len(self.tiles)))]

    def __len__(self):
        return len(self.tiles)


def test_empty_batches_buffer_and_invalid_input():
    spec = AESpec((16,), channels=(4,))
    trainer = AETrainer(spec, iterations_per_step=2)
    trainer.partial_fit(np.zeros((0, 16), np.float32))
    assert math.isnan(trainer.loss_) and trainer.n_samples_seen_ == 0
    buffer = ListBuffer()
    trainer = AETrainer(spec, iterations_per_step=2, buffer=buffer, mode="local_sgd")
    trainer.partial_fit(np.zeros((0, 16), np.float32))  # empty buffer: nothing to train on
    assert math.isnan(trainer.loss_)
    trainer.partial_fit(np.ones((5, 16), np.float32), sources=np.arange(5))
    trainer.partial_fit(np.zeros((0, 16), np.float32), step=7)  # trains on the buffer
    assert np.isfinite(trainer.loss_) and [c[2] for c in buffer.calls] == [0, 1, 7]
    assert buffer.calls[1][1].tolist() == list(range(5))
    with pytest.raises(ValueError, match="NaN"):
        trainer.partial_fit(np.full((2, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="shape"):
        trainer.partial_fit(np.ones((2, 15), np.float32))


@pytest.mark.mpi
@pytest.mark.timeout(180)
def test_two_rank_training_gives_identical_weights_and_counted_bytes(mpirun):
    proc = mpirun(2, """
        import hashlib, math
        import numpy as np
        from mpi4py import MPI
        from stagelearn.analytics.ae_training import AETrainer, destroy, init_process_group_from_mpi
        from stagelearn.analytics.autoencoder import named_arrays, spec_from_data

        comm = MPI.COMM_WORLD
        rank, size = comm.Get_rank(), comm.Get_size()
        rng = np.random.default_rng(rank)
        x = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        def tiles(phase, n):  # each rank sees a different field
            f = np.sin((rank + 1) * (x[None, :] + phase[:, None])) + rank
            return f[:n].reshape(-1, 16).astype(np.float32)
        spec = spec_from_data(tiles(rng.uniform(0, 6, 8), 8), (16,), channels=(4, 8), comm=comm)
        T, k, calls = 10, 4, 3
        for mode in ("ddp", "local_sgd"):
            tr = AETrainer(spec, comm=comm, mode=mode, sync_every=k, iterations_per_step=T, batch_size=8, lr=3e-3)
            for c in range(calls):
                n = 0 if (rank == 1 and c == 1) else 8  # rank 1 has no tiles in the second call
                tr.partial_fit(tiles(rng.uniform(0, 6, 8), n))
            arrays = named_arrays(tr.model)
            digest = hashlib.sha256(b"".join(a.tobytes() for a in arrays.values())).hexdigest()
            digests = comm.allgather(digest)
            assert digests[0] == digests[1], (mode, digests)
            P = sum(a.size for a in arrays.values())
            per_call = 1 + (T if mode == "ddp" else math.ceil(T / k))
            expected_rounds = 1 + calls * per_call
            expected_bytes = (4 * P * (size - 1) if rank == 0 else 0) + calls * (16 + (per_call - 1) * 4 * (P + 2))
            assert tr.rounds == expected_rounds, (mode, tr.rounds, expected_rounds)
            assert tr.bytes_communicated == expected_bytes, (mode, tr.bytes_communicated, expected_bytes)
            assert tr.n_samples_seen_ == (2 * calls - 1) * 32, tr.n_samples_seen_  # 32 tiles a call and rank
            losses = comm.allgather(tr.loss_)
            assert np.isfinite(losses[0]) and losses[0] == losses[1], losses
            print(f"rank {rank} {mode} ok loss {tr.loss_:.4f} bytes {tr.bytes_communicated} rounds {tr.rounds}")
        try:  # a bad batch on one rank raises on both instead of leaving one in a collective
            tr.partial_fit(tiles(rng.uniform(0, 6, 8), 8) * (np.nan if rank == 1 else 1.0))
            raise AssertionError("no error")
        except ValueError as exc:
            print(f"rank {rank} rejected: {exc}")
        group = init_process_group_from_mpi(comm)  # idempotent
        assert group is init_process_group_from_mpi(comm)
        destroy()
    """)
    assert proc.stdout.count(" ok ") == 4 and proc.stdout.count("rejected") == 2, proc.stdout


@pytest.mark.mpi
@pytest.mark.timeout(180)
def test_process_group_on_one_rank(mpirun):
    proc = mpirun(1, """
        import torch, torch.distributed as dist
        from mpi4py import MPI
        from stagelearn.analytics.ae_training import destroy, init_process_group_from_mpi

        group = init_process_group_from_mpi(MPI.COMM_WORLD, timeout_s=20)
        t = torch.ones(3)
        dist.all_reduce(t, group=group)
        assert dist.get_world_size() == 1 and torch.equal(t, torch.ones(3))
        destroy()
        assert not dist.is_initialized()
        print("ok")
    """)
    assert "ok" in proc.stdout


def test_autoencoder_learner_holds_warmup_tiles_then_trains_and_round_trips_its_state():
    """The learner holds the warm-up steps' tiles, normalises by all of them, then trains; its
    state (weights, replay buffer, Adam moments) rebuilds an identical learner."""
    cfg = LearnerConfig(type="autoencoder", warmup_steps=2,
                        autoencoder={"channels": [4], "iterations_per_step": 2, "device": "cpu", "threads": 0},
                        replay={"kind": "reservoir", "max_mib": 1})
    est = make_learner(cfg, (4, 4), MPI.COMM_SELF)
    assert est.kind == "ae" and not est.ready and est.training_stats() is None
    first = to_tiles(smooth_field((16, 16)), (4, 4))
    second = first + 2.0
    est.partial_fit(first, sources=np.zeros(len(first), dtype=np.int64), step=0)
    assert not est.ready
    est.partial_fit(second, sources=np.ones(len(second), dtype=np.int64), step=1)
    assert est.ready and est.params_finite()
    both = np.concatenate([first, second]).astype(np.float64)
    assert est.spec.offset == pytest.approx(both.mean()) and est.spec.scale == pytest.approx(both.std())
    assert est.trainer.n_samples_seen_ == len(both) and est.trainer.n_iter_ == 4
    assert set(est.training_stats()) == {"bytes", "rounds", "iterations", "loss"}
    with pytest.raises(ValueError, match="learner.type pca"):
        est.n_components_explaining(0.9)
    state = est.get_state()
    assert json.loads(json.dumps(state["meta"])) == state["meta"]
    assert {"buffer/tiles", "buffer/sources", "buffer/steps", "buffer/counts"} <= set(state["rank_arrays"])
    other = make_learner(cfg, (4, 4), MPI.COMM_SELF).set_state(state)
    for k, v in est.model_arrays().items():
        np.testing.assert_array_equal(v, other.model_arrays()[k])
    np.testing.assert_array_equal(est.trainer.buffer.tiles(), other.trainer.buffer.tiles())
    np.testing.assert_array_equal(est.trainer.buffer.steps(), other.trainer.buffer.steps())
    again = other.get_state()["rank_arrays"]
    for k, v in state["rank_arrays"].items():
        np.testing.assert_array_equal(v, again[k])
    fresh = make_learner(cfg, (4, 4), MPI.COMM_SELF).set_state({**state, "rank_arrays": None})
    assert len(fresh.trainer.buffer) == 0 and fresh.ready
