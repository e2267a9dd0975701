"""Bit-exact decoding across processes, BLAS kernels and thread counts.

A producer process encodes blocks (PCA; with temporal prediction; with a pointwise error bound;
the autoencoder codec with both, when torch is installed) and writes the payloads, the models' arrays and its own closed-loop
reconstructions; a decoder process with another OpenBLAS kernel (``OPENBLAS_CORETYPE`` set or
unset) and another thread count decodes them. Every decoded block must equal the producer's
reconstruction bit for bit, and no checksum warning may be logged.

The module is also the worker: ``python tests/test_codec_determinism.py produce|decode DIR``.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stagelearn.analytics.fixed_point import MAX_CODE, FixedPointBasis

TILE = (4, 4, 4)
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# ------------------------------------------------------------------------------ worker
def _field(t, shape=(20, 16, 12), seed=3):
    """A smooth pattern drifting in time, plus a little noise (float64)."""
    rng = np.random.default_rng(seed + t)
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    f = np.sin(6 * grids[0] + 0.05 * t) * np.cos(5 * grids[1]) + 0.3 * np.sin(7 * grids[2] - 0.03 * t)
    return f + 1e-3 * rng.standard_normal(shape)


def _produce(out):
    """Encode the scenarios; write payloads, model arrays and reconstructions under ``out``."""
    from stagelearn.analytics import IncrementalPCA, TransformCodec
    from stagelearn.analytics.codec import encode_block, parse_payload
    from stagelearn.analytics.tiling import to_tiles

    est = IncrementalPCA().partial_fit(to_tiles(_field(0).astype(np.float32), TILE))
    np.savez(os.path.join(out, "pca.npz"), mean=est.mean_.astype(np.float32), components=est.components_.astype(np.float32))
    codec = TransformCodec(est.mean_, est.components_, 1.0)
    target = 4.0 * 10 ** (-45 / 10)
    scenarios = {
        "pca": dict(temporal=False, kw=dict(raw_fraction=0.05, target_mse=target)),
        "pca_temporal": dict(temporal=True, kw=dict(raw_fraction=0.02, target_mse=target)),
        "pca_bound": dict(temporal=True, kw=dict(raw_fraction=0.0, target_mse=target, abs_bound=2e-3)),
    }
    codecs = dict.fromkeys(scenarios, codec)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        from stagelearn.analytics.ae_codec import AECodec
        from stagelearn.analytics.autoencoder import TileAutoencoder, named_arrays, spec_from_data

        spec = spec_from_data(to_tiles(_field(0).astype(np.float32), TILE), TILE, channels=(4, 8), latent_dim=6)
        torch.manual_seed(0)
        model = TileAutoencoder(spec)
        np.savez(os.path.join(out, "ae.npz"), **named_arrays(model))
        with open(os.path.join(out, "ae_spec.json"), "w") as f:
            json.dump(spec.to_dict(), f)
        scenarios["ae_temporal_bound"] = dict(temporal=True, kw=dict(raw_fraction=0.02, target_mse=target, abs_bound=2e-2))
        codecs["ae_temporal_bound"] = AECodec(model, offset=float(spec.offset))
    counts = {}
    for name, sc in scenarios.items():
        prev = None
        codec = codecs[name]
        for t in range(1, 4):
            x = _field(t)
            eb = encode_block(x if "bound" in name else x.astype(np.float32), codec, TILE, header={"step": t},
                              prev=prev if sc["temporal"] else None, **sc["kw"])
            header, _ = parse_payload(eb.payload)
            for key in ("n_inter", "n_corrected", "n_raw"):
                counts[f"{name}_{key}"] = counts.get(f"{name}_{key}", 0) + int(header.get(key, 0))
            with open(os.path.join(out, f"{name}_{t}.payload"), "wb") as f:
                f.write(eb.payload)
            np.save(os.path.join(out, f"{name}_{t}.recon.npy"), eb.reconstruction)
            prev = eb.reconstruction
    with open(os.path.join(out, "counts.json"), "w") as f:
        json.dump(counts, f)


def _decode(out):
    """Decode every payload under ``out`` with the stored models; write what was decoded."""
    import logging

    from stagelearn.analytics import TransformCodec
    from stagelearn.analytics.codec import decode_block

    warnings = []

    class _Collect(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    logging.getLogger("stagelearn").addHandler(_Collect(logging.WARNING))
    with np.load(os.path.join(out, "pca.npz"), allow_pickle=False) as z:
        pca = TransformCodec(z["mean"], z["components"], 1.0)
    ae = None
    if os.path.exists(os.path.join(out, "ae_spec.json")):
        from stagelearn.analytics.ae_codec import AECodec
        from stagelearn.analytics.autoencoder import from_arrays

        with open(os.path.join(out, "ae_spec.json")) as f, np.load(os.path.join(out, "ae.npz"), allow_pickle=False) as z:
            spec = json.load(f)
            ae = AECodec(from_arrays(spec, dict(z)), offset=float(spec["offset"]))
    names = sorted({f.rsplit("_", 1)[0] for f in os.listdir(out) if f.endswith(".payload")})
    for name in names:
        codec = ae if name.startswith("ae") else pca
        prev = None
        for t in range(1, 4):
            with open(os.path.join(out, f"{name}_{t}.payload"), "rb") as f:
                block, header, _ = decode_block(f.read(), codec, prev=prev)
            np.save(os.path.join(out, f"{name}_{t}.decoded.npy"), block)
            prev = block  # the decoder's own closed loop
    with open(os.path.join(out, "warnings.json"), "w") as f:
        json.dump(warnings, f)


# ------------------------------------------------------------------------------- tests
def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _env(coretype, threads):
    env = dict(os.environ)
    for var in _THREAD_VARS:
        env[var] = str(threads)
    if coretype is None:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    else:
        env["OPENBLAS_CORETYPE"] = coretype
    return env


def _run(role, out, env):
    proc = subprocess.run([sys.executable, __file__, role, str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{role} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("producer, decoder", [(("Haswell", 2), (None, 1)), ((None, 1), ("Haswell", 2))],
                         ids=["haswell2-to-default1", "default1-to-haswell2"])
def test_decoder_in_another_process_and_blas_matches_producer_bit_for_bit(tmp_path, producer, decoder):
    _run("produce", tmp_path, _env(*producer))
    _run("decode", tmp_path, _env(*decoder))
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert counts["pca_temporal_n_inter"] > 0 and counts["pca_bound_n_corrected"] > 0 and counts["pca_n_raw"] > 0, counts
    recon = sorted(p.name for p in tmp_path.glob("*.recon.npy"))
    if _has_torch():
        assert counts["ae_temporal_bound_n_inter"] > 0, counts
    assert len(recon) == (12 if _has_torch() else 9)
    for name in recon:
        want = np.load(tmp_path / name)
        got = np.load(tmp_path / name.replace(".recon.", ".decoded."))
        assert got.dtype == want.dtype == np.float32 and got.tobytes() == want.tobytes(), name
    assert json.loads((tmp_path / "warnings.json").read_text()) == []


def test_fixed_point_reconstruction_is_exact_and_row_independent():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    basis = FixedPointBasis(q.T.astype(np.float32))
    assert MAX_CODE * np.abs(basis.ints).sum(axis=0).max() <= 2.0**53 and np.all(basis.ints == np.rint(basis.ints))
    codes = rng.integers(-MAX_CODE, MAX_CODE + 1, size=(300, 64))
    full = basis.combine(codes, 0.37)
    # exact: the same as the sum in Python integers, rounded once to float64 and once to float32
    ints = basis.ints.astype(np.int64)
    for i in (0, 17, 299):
        exact = [sum(int(c) * int(b) for c, b in zip(codes[i], ints[:, j])) for j in range(0, 64, 9)]
        want = np.array([np.float64(e) * (0.37 * 2.0**-basis.shift) for e in exact]).astype(np.float32)
        np.testing.assert_array_equal(full[i, ::9], want)
    # any subset of rows, any order: the same rows
    sub = rng.permutation(300)[:37]
    assert basis.combine(codes[sub], 0.37).tobytes() == full[sub].tobytes()
    # close to the float64 product with the unrounded basis
    ref = (codes[:5] * 0.37) @ q.T.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(full[:5], ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_autoencoder_prediction_is_exact_for_any_subset_and_thread_count():
    """The autoencoder prediction both sides reconstruct (:class:`FixedPointDecoder`) depends only on
    each tile's own latent code, not on the batch, torch's threads or the BLAS kernel."""
    torch = pytest.importorskip("torch")
    from stagelearn.analytics.ae_fixed import FixedPointDecoder
    from stagelearn.analytics.autoencoder import AESpec, TileAutoencoder

    torch.manual_seed(1)
    model = TileAutoencoder(AESpec(TILE))
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (3000, 8)).astype(np.int32)
    scales = rng.random(3000).astype(np.float32)
    full = FixedPointDecoder(model)(codes, scales)
    assert full.dtype == np.float32 and np.all(np.isfinite(full))
    ref = model.decode_latents(codes, scales)
    np.testing.assert_allclose(full, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            idx = rng.choice(3000, 37, replace=False)
            assert FixedPointDecoder(model)(codes[idx], scales[idx]).tobytes() == full[idx].tobytes()
    finally:
        torch.set_num_threads(threads)


def test_codes_outside_the_exact_range_are_rejected():
    from stagelearn.analytics import TransformCodec
    from stagelearn.analytics.codec import decode_block, encode_block
    from stagelearn.analytics.entropy import pack_codes
    from stagelearn.analytics.payload import pack_payload, parse_payload

    x = _field(1).astype(np.float32)
    codec = TransformCodec(np.zeros(64, np.float32), np.eye(64, dtype=np.float32), 1e-3)
    eb = encode_block(x, codec, TILE, raw_fraction=0.0)
    header, sec = parse_payload(eb.payload)
    codes = np.full((header["n_tiles"], 64), MAX_CODE + 1, np.int32)
    forged = pack_payload(header, dict(sec, codes=pack_codes(codes)))
    with pytest.raises(ValueError, match="code range"):
        decode_block(forged, codec)


if __name__ == "__main__":
    {"produce": _produce, "decode": _decode}[sys.argv[1]](sys.argv[2])
