"""Velocity-space PCA and AE coding of a Gysela-like 5-D distribution function, judged by its moments.

    python benchmarks/gyrokinetic_moments.py            # about 1-2 minutes on 2 cores
    python benchmarks/gyrokinetic_moments.py --quick    # smaller grid, fewer iterations (smoke test)

Data: :class:`~stagelearn.sim_mocks.GyrokineticMock5D` (single process), spatial grid
``(r, theta, phi) = 16 x 32 x 8``, velocity grid ``(v_par, mu) = 32 x 16`` (``v_par`` in
``[-4, 4]``, ``mu`` in ``[0, 8]``), default profiles and three ITG-like modes, relative noise
1e-4. Output frames every 5 time steps from ``t = 20`` (modes still growing) to ``t = 75``
(saturated): 12 frames, 2 M values (8 MiB as float32) each. The first 6 frames train the models
(a stream, as staging would see it), the last 6 are held out and coded.

Layout: each frame ``f`` of shape ``(n_r, n_theta, n_phi, n_vpar, n_mu)`` is reshaped (a view, C
order) to a block of shape ``(n_points, n_vpar, n_mu)`` with ``n_points = n_r n_theta n_phi`` and
cut into tiles of shape ``(1, n_vpar, n_mu)``: one tile = one spatial point's velocity-space slice
= one sample of ``n_vpar * n_mu = 512`` features (the reduction practice for XGC/Gysela data). Both
models see exactly these samples:

- PCA: :class:`~stagelearn.analytics.IncrementalPCA` (full basis, the staging default),
  ``partial_fit`` once per training frame; coded with
  :class:`~stagelearn.analytics.TransformCodec`.
- AE: the tile autoencoder supports 1 to 3 tile axes, so its spec has the 2-D tile shape
  ``(n_vpar, n_mu)`` (convolutions over ``v_par`` and ``mu``); a ``(1, n_vpar, n_mu)`` tile of the
  block flattens in C order to the same 512 values as an ``(n_vpar, n_mu)`` slice, so the AE codec
  codes the same block with the same ``(1, n_vpar, n_mu)`` tiles (``encode_block`` only checks the
  feature count). :class:`~stagelearn.analytics.ae_training.AETrainer`, ``partial_fit`` on each
  training frame for several passes; coded with
  :meth:`~stagelearn.analytics.encoder.VariableModel.codec` (latent codes + value-domain residual).

Coding: ``encode_block(block, codec, (1, n_vpar, n_mu), raw_fraction=0.01, target_mse=span**2 *
10**(-psnr/10))`` at 40 and 60 dB (``span`` = the frame's value range), then ``decode_block`` (the
decoded block is what the moments are computed from). Reported per method and target, over the 6
held-out frames:

- ratio: raw float32 bytes / payload bytes (payloads hold all side information: latent codes and
  scales, Laplace tables, raw tiles, headers; the model, pushed once, is printed separately);
- PSNR: achieved, against each frame's range (mean and minimum over frames);
- moments: density ``n``, parallel flow ``n u`` and energy ``W`` (:func:`~stagelearn.sim_mocks.
  gyrokinetic.moments`, gyrokinetic Jacobian ``2 pi B``) from the decoded ``f`` versus from the raw
  ``f``: relative L2 error ``||m_dec - m_raw|| / ||m_raw||`` and relative max error
  ``max|m_dec - m_raw| / max|m_raw|`` (worst frame). The flow is a pure perturbation (no
  background flow), so its relative errors are relative to the fluctuation itself.

SZ3 (PSNR mode, on the same ``(n_points, n_vpar, n_mu)`` block) is printed as a reference point when
``pysz`` is installed.

Prints ``name: value`` lines and writes ``results/gyrokinetic/summary.md`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from mpi4py import MPI
from stagelearn.analytics import IncrementalPCA, TransformCodec
from stagelearn.analytics.codec import decode_block, encode_block
from stagelearn.analytics.metrics import psnr
from stagelearn.sim_mocks import GyrokineticMock5D
from stagelearn.sim_mocks.gyrokinetic import fluid_from_moments, moments

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "results", "gyrokinetic")
TARGETS = (40.0, 60.0)
MOMENTS = ("density", "parallel_flow", "energy")


def make_frames(grid, velocity, n_frames, first_step, plotgap):
    sim = GyrokineticMock5D(*grid, *velocity, comm=MPI.COMM_SELF, noise=1e-4, seed=0)
    sim.advance(first_step)
    frames = []
    for i in range(n_frames):
        if i:
            sim.advance(plotgap)
        frames.append((sim.time, sim.fields()["f"].copy()))
    return sim, frames


def moment_errors(m_raw, m_dec):
    out = {}
    for k in MOMENTS:
        a, b = m_raw[k].ravel(), m_dec[k].ravel()
        out[k] = (float(np.linalg.norm(b - a) / np.linalg.norm(a)), float(np.abs(b - a).max() / np.abs(a).max()))
    return out


def train_pca(train_blocks, n_vpar, n_mu):
    est = IncrementalPCA()
    for block in train_blocks:
        est.partial_fit(block.reshape(-1, n_vpar * n_mu))
    model_bytes = 4 * (est.components_.size + est.mean_.size)
    return TransformCodec(est.mean_, est.components_, 1.0), model_bytes, est


def train_ae(train_blocks, n_vpar, n_mu, *, passes, iterations_per_step):
    import torch
    from stagelearn.analytics.ae_training import AETrainer
    from stagelearn.analytics.autoencoder import named_arrays, spec_from_data
    from stagelearn.analytics.encoder import VariableModel

    torch.set_num_threads(1)
    samples = [b.reshape(-1, n_vpar * n_mu) for b in train_blocks]
    spec = spec_from_data(samples[0], (n_vpar, n_mu), channels=(16, 32), latent_dim=8)
    trainer = AETrainer(spec, iterations_per_step=iterations_per_step, batch_size=256, lr=2e-3, device="cpu", seed=0)
    for _ in range(passes):
        for s in samples:
            trainer.partial_fit(s)
    arrays = named_arrays(trainer.model)
    lo = float(min(b.min() for b in train_blocks))
    hi = float(max(b.max() for b in train_blocks))
    vm = VariableModel((n_vpar, n_mu), lo, hi, "ae", autoencoder=spec.to_dict(), ae_arrays=arrays)
    model_bytes = 4 * sum(a.size for a in arrays.values())
    return vm.codec(), model_bytes, trainer


def evaluate(name, compress, test, B, sim, shape5):
    """Code every held-out frame at each target with ``compress(block, target) -> (nbytes, rec)``;
    returns rows of the table."""
    rows = []
    for target in TARGETS:
        raw_bytes = sent = 0
        psnrs, errs, t_enc = [], [], 0.0
        for _, f in test:
            block = f.reshape(-1, *f.shape[-2:]).astype(np.float32)
            t0 = time.perf_counter()
            nbytes, rec = compress(block, target)
            t_enc += time.perf_counter() - t0
            raw_bytes += block.nbytes
            sent += nbytes
            psnrs.append(psnr(block, rec))
            errs.append(moment_errors(moments(f, B, sim.grid), moments(rec.reshape(shape5), B, sim.grid)))
        rows.append(row(name, target, raw_bytes, sent, psnrs, errs, t_enc, len(test)))
    return rows


def learned(codec, tile):
    """``compress`` of a learned codec: :func:`encode_block` at the target, checked by decoding."""
    def compress(block, target):
        span = float(block.max() - block.min())
        eb = encode_block(block, codec, tile, raw_fraction=0.01, target_mse=span**2 * 10 ** (-target / 10))
        dec, _, _ = decode_block(eb.payload, codec)
        assert np.array_equal(dec, eb.reconstruction), "decoder disagrees with the producer's reconstruction"
        return len(eb.payload), dec
    return compress


def row(name, target, raw_bytes, sent, psnrs, errs, t_enc, n_frames):
    r = {"method": name, "target_db": target, "ratio": raw_bytes / sent, "psnr_mean": float(np.mean(psnrs)),
         "psnr_min": float(np.min(psnrs)), "encode_s_per_frame": t_enc / n_frames}
    for k in MOMENTS:
        r[f"{k}_rel_l2"] = max(e[k][0] for e in errs)
        r[f"{k}_rel_max"] = max(e[k][1] for e in errs)
    return r


def evaluate_sz3(test, B, sim, shape5):
    try:
        import pysz  # noqa: F401
        from stagelearn.analytics.baselines import sz3_at_psnr
    except ImportError:
        return []
    return evaluate("SZ3 (reference)", sz3_at_psnr, test, B, sim, shape5)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller grid and training (smoke test)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.quick:
        grid, velocity, passes, iters = (8, 16, 4), (32, 16), 2, 20
    else:
        grid, velocity, passes, iters = (16, 32, 8), (32, 16), 4, 40
    n_vpar, n_mu = velocity
    n_frames, n_train, first_step, plotgap = 12, 6, 20, 5
    tile = (1, n_vpar, n_mu)
    shape5 = grid + velocity

    t0 = time.perf_counter()
    sim, frames = make_frames(grid, velocity, n_frames, first_step, plotgap)
    t_sim = time.perf_counter() - t0
    train, test = frames[:n_train], frames[n_train:]
    B = sim.B
    fl = fluid_from_moments(moments(test[-1][1], B, sim.grid))
    print(f"grid: {'x'.join(map(str, shape5))} (r, theta, phi, v_par, mu)")
    print(f"samples_per_frame: {int(np.prod(grid))} of {n_vpar * n_mu} features")
    print(f"frames: {n_frames} (t = {frames[0][0]:g} .. {frames[-1][0]:g}), train {n_train}, held out {len(test)}")
    print(f"frame_raw_float32_bytes: {test[0][1].size * 4}")
    print(f"last_frame_density_range: {fl['n'].min():.4f} .. {fl['n'].max():.4f}")
    print(f"last_frame_flow_range: {fl['u'].min():.4f} .. {fl['u'].max():.4f}")
    print(f"last_frame_temperature_range: {fl['T'].min():.4f} .. {fl['T'].max():.4f}")
    print(f"simulation_s: {t_sim:.2f}")

    train_blocks = [f.reshape(-1, n_vpar, n_mu).astype(np.float32) for _, f in train]
    t0 = time.perf_counter()
    pca_codec, pca_bytes, est = train_pca(train_blocks, n_vpar, n_mu)
    t_pca = time.perf_counter() - t0
    ev = np.cumsum(est.explained_variance_ratio_)
    print(f"pca_train_s: {t_pca:.2f}")
    print(f"pca_model_bytes: {pca_bytes}")
    print(f"pca_components_for_99.99pct_variance: {int(np.searchsorted(ev, 0.9999) + 1)}")
    t0 = time.perf_counter()
    ae_codec, ae_bytes, trainer = train_ae(train_blocks, n_vpar, n_mu, passes=passes, iterations_per_step=iters)
    t_ae = time.perf_counter() - t0
    test_samples = test[-1][1].reshape(-1, n_vpar * n_mu).astype(np.float32)
    ae_alone = psnr(test_samples, trainer.model.reconstruct(test_samples))
    print(f"ae_train_s: {t_ae:.2f} ({trainer.n_iter_} iterations, final loss {trainer.loss_:.3g})")
    print(f"ae_model_bytes: {ae_bytes}")
    print(f"ae_alone_psnr_last_frame_db: {ae_alone:.2f}")

    rows = evaluate("PCA", learned(pca_codec, tile), test, B, sim, shape5)
    rows += evaluate("AE", learned(ae_codec, tile), test, B, sim, shape5)
    rows += evaluate_sz3(test, B, sim, shape5)
    for r in rows:
        key = f"{r['method'].split()[0].lower()}_{int(r['target_db'])}db"
        print(f"{key}_ratio: {r['ratio']:.2f}")
        print(f"{key}_psnr_mean_db: {r['psnr_mean']:.2f}")
        print(f"{key}_psnr_min_db: {r['psnr_min']:.2f}")
        for k in MOMENTS:
            print(f"{key}_{k}_rel_l2: {r[f'{k}_rel_l2']:.3e}")
            print(f"{key}_{k}_rel_max: {r[f'{k}_rel_max']:.3e}")
        print(f"{key}_encode_s_per_frame: {r['encode_s_per_frame']:.3f}")
    wall = time.perf_counter() - t_start
    print(f"wall_s: {wall:.1f}")

    os.makedirs(args.out, exist_ok=True)
    meta = {"grid": list(shape5), "frames": n_frames, "train_frames": n_train, "t": [t for t, _ in frames],
            "pca_model_bytes": pca_bytes, "ae_model_bytes": ae_bytes, "ae_iterations": trainer.n_iter_,
            "ae_alone_psnr_last_frame_db": ae_alone, "wall_s": wall, "quick": args.quick, "rows": rows}
    with open(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
    with open(os.path.join(args.out, "summary.md"), "w") as fh:
        fh.write(summary_md(meta, sys.argv))
    print(f"summary: {os.path.relpath(os.path.join(args.out, 'summary.md'), REPO)}")


def summary_md(meta, argv):
    g = meta["grid"]
    lines = [
        "# Gysela-like 5-D f: velocity-space PCA / AE coding and moment errors",
        "",
        (f"`python benchmarks/gyrokinetic_moments.py{' --quick' if meta['quick'] else ''}` "
         f"(single process, wall {meta['wall_s']:.0f} s)."),
        "",
        (f"Grid (r, theta, phi, v_par, mu) = {' x '.join(map(str, g))}; one sample = one spatial point's "
         f"{g[3]} x {g[4]} velocity slice ({g[0] * g[1] * g[2]} samples per frame). {meta['frames']} frames at "
         f"t = {meta['t'][0]:g} .. {meta['t'][-1]:g}; the first {meta['train_frames']} train the models, the other "
         f"{meta['frames'] - meta['train_frames']} are coded (block (n_points, n_vpar, n_mu), tile (1, n_vpar, n_mu), "
         "1% raw tiles, quantization step set per frame for the target)."),
        "",
        ("Ratio = raw float32 bytes / payload bytes (model not counted: PCA "
         f"{meta['pca_model_bytes'] / 2**20:.2f} MiB, AE {meta['ae_model_bytes'] / 2**10:.0f} KiB, pushed once). "
         "Moment errors: decoded f vs raw f, relative L2 / relative max (max over held-out frames); "
         "n = density, nu = parallel flow, W = energy."),
        "",
        "| method | target dB | ratio | PSNR mean / min dB | n rel L2 | n rel max | nu rel L2 | nu rel max | W rel L2 | W rel max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in meta["rows"]:
        lines.append(
            f"| {r['method']} | {r['target_db']:g} | {r['ratio']:.1f} | {r['psnr_mean']:.1f} / {r['psnr_min']:.1f} | "
            + " | ".join(f"{r[f'{k}_{e}']:.1e}" for k in MOMENTS for e in ("rel_l2", "rel_max")) + " |")
    lines += ["", (f"AE alone (latent code only, no residual) on the last frame: {meta['ae_alone_psnr_last_frame_db']:.1f} dB "
                   f"after {meta['ae_iterations']} iterations."), ""]
    over = [r for r in meta["rows"] if r["method"] != "SZ3 (reference)" and r["psnr_min"] > r["target_db"] + 5]
    if over:
        lines += [("Above-target PSNR (" + ", ".join(f"{r['method']} {r['target_db']:g} dB" for r in over) + "): the "
                   "PCA rate control caps the step at `TransformCodec.max_step_factor` times the uniform-noise step, and "
                   "the AE's latent prediction alone already beats a low target, so the residual quantizes to zero."), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
