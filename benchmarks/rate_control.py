"""Rate control: the PSNR each coded step reaches against the ``codec.psnr_db`` target.

    python benchmarks/rate_control.py                      # every bundled example and benchmark field
    python benchmarks/rate_control.py --examples heat2d    # some of them
    python benchmarks/rate_control.py --steps 30           # more output steps per example
    python benchmarks/rate_control.py --codec stream       # the stream codec, old and new controller side by side

For each bundled run YAML (``examples/*.yaml``, ``examples/own_simulation``, ``examples/pde_hook``;
``examples/intransit`` runs the Gray-Scott mock's settings too) the mock simulation runs on one
process; each output step's fields are cut into the producer ranks' blocks (``MPI.Compute_dims``
and the balanced split, as :class:`~stagelearn.sim_mocks.decomposition.CartesianDomain`), the
learner of the YAML (``make_learner``) learns every step, the first ``warmup_steps`` steps go raw,
an encoder is built from the learner then and every ``publish_every`` steps, and every block of
a coded step goes through the producers' one encode path
(:func:`stagelearn.analytics.step_encode.encode_step_block`, targets from
:func:`~stagelearn.analytics.step_encode.step_targets`, temporal prediction when
``keyframe_every`` > 0). The benchmark fields of ``benchmarks/rate_distortion.py`` (the held-out
``allen_cahn`` and ``turbulence2d`` among them) go through the same path as one block each, with
the demo's codec settings, at 40, 50 and 60 dB.

The achieved PSNR of a step and variable is recomputed here in float64 from the caller's values
(the simulation's own float64 field) and the decoded reconstruction, over the variable's global
range: ``10 log10(range^2 / MSE)``; every payload is decoded with
:func:`~stagelearn.analytics.codec.decode_block` and compared with the producer's reconstruction.
Printed per example and variable: coded steps, min and max of achieved - target (dB), and the
compression ratio (raw float32 bytes over payload bytes, coded steps only).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
from mpi4py import MPI

from stagelearn.analytics.codec import decode_block
from stagelearn.analytics.encoder import Encoder
from stagelearn.analytics.learners.factory import make_learner
from stagelearn.analytics.step_encode import encode_step_block, step_targets
from stagelearn.analytics.temporal import PredictionChain
from stagelearn.analytics.tiling import to_tiles
from stagelearn.sim_mocks.decomposition import balanced_split
from stagelearn.sim_mocks.runner import build_simulation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = {
    "gray_scott": "examples/gray_scott.yaml",
    "gray_scott_ae": "examples/gray_scott_ae.yaml",
    "heat2d": "examples/heat2d.yaml",
    "own_simulation": "examples/own_simulation/my_run.yaml",
    "pde_hook": "examples/pde_hook/run.yaml",
    "gyrokinetic": None,  # the mock with its configuration defaults (no bundled YAML names it)
}
BENCH_FIELDS = ("gray_scott", "heat2d", "gyrokinetic", "allen_cahn", "turbulence2d")


def split_blocks(field, ranks):
    """``[(start, block)]``: ``field`` cut over ``ranks`` producer ranks as the mocks decompose it."""
    dims = MPI.Compute_dims(ranks, field.ndim)
    out = []
    for coords in np.ndindex(*dims):
        se = [balanced_split(n, d, c) for n, d, c in zip(field.shape, dims, coords)]
        out.append(field[tuple(slice(s, s + c) for s, c in se)])
    return out


def psnr64(originals, recons):
    """PSNR (dB) of reconstructed blocks against the original ones, float64, over their global range."""
    sse = sum(float(np.sum((np.asarray(o, np.float64) - np.asarray(r, np.float64)) ** 2)) for o, r in zip(originals, recons))
    n = sum(o.size for o in originals)
    lo = min(float(np.min(o)) for o in originals)
    hi = max(float(np.max(o)) for o in originals)
    return math.inf if sse == 0 else 10.0 * math.log10((hi - lo) ** 2 / (sse / n))


class StreamRun:
    """One variable set streamed through the producers' encode path, step after step.

    Parameters
    ----------
    learner_cfg : LearnerConfig
    tile_shape : tuple of int
    psnr_db, raw_fraction : float
    keyframe_every : int
    error_bound : dict or None
    share : bool, default=True
        Share each step's error budget over its blocks (``step_targets(..., encoder=, chain=, keys=)``);
        False: the plain per-block target (``step_targets(comm, blocks, psnr_db)``).
    """

    def __init__(self, learner_cfg, tile_shape, psnr_db, raw_fraction, keyframe_every=0, error_bound=None, share=True):
        self.share = share
        self.learner_cfg, self.tile_shape = learner_cfg, tuple(tile_shape)
        self.psnr_db, self.raw_fraction = float(psnr_db), float(raw_fraction)
        self.keyframe_every, self.error_bound = int(keyframe_every), error_bound
        self.learners, self.ranges, self.encoder, self.seen = {}, {}, None, 0
        self.chain = PredictionChain()
        self.prev = {}

    def step(self, step, fields, ranks):
        """Code one output step. ``fields``: name -> float64 global field. Returns ``{name: (psnr, raw_bytes,
        payload_bytes)}`` for coded steps, ``{}`` while the steps go raw."""
        blocks = {n: split_blocks(f, ranks) for n, f in fields.items()}
        out = {}
        if self.encoder is not None:
            enc = self.encoder
            shared = dict(encoder=enc, chain=self.chain, keys={n: [(n, r) for r in range(len(bl))] for n, bl in blocks.items()})
            f32 = {n: [b.astype(np.float32) for b in bl] for n, bl in blocks.items()}  # as they travel
            targets, _ = step_targets(MPI.COMM_SELF, f32, enc.psnr_db, **(shared if self.share else {}))
            self.chain.keyframe_every = enc.keyframe_every
            for name, bl in blocks.items():
                model, recons, nbytes = enc.variables[name], [], 0
                for r, given in enumerate(bl):
                    block = f32[name][r]
                    prev_step, prev = self.chain.reference((name, r), block.shape)
                    code = encode_step_block(block, model, step=step, chain=self.chain, chain_key=(name, r),
                                             target_mse=targets[name], raw_fraction=enc.raw_fraction,
                                             header={"step": step, "variable": name, "rank": r}, reference=given)
                    dec = decode_block(code.payload, model.codec(), prev=prev)[0]
                    if not np.array_equal(dec, code.reconstruction):
                        raise AssertionError(f"step {step} {name} rank {r}: decoded block differs from the producer's")
                    recons.append(dec)
                    nbytes += code.sent_bytes
                out[name] = (psnr64(bl, recons), sum(4 * b.size for b in bl), nbytes)
            self.chain.end_step()
        for name, bl in blocks.items():  # staging learns from every step
            if name not in self.learners:
                self.learners[name] = make_learner(self.learner_cfg, self.tile_shape, MPI.COMM_SELF)
            tiles = np.concatenate([to_tiles(b.astype(np.float32), self.tile_shape) for b in bl])
            self.learners[name].partial_fit(tiles, step=step)
            lo, hi = self.ranges.get(name, (math.inf, -math.inf))
            self.ranges[name] = (min(lo, float(fields[name].min())), max(hi, float(fields[name].max())))
        self.seen += 1
        lc = self.learner_cfg
        if self.seen >= lc.warmup_steps and (self.seen - lc.warmup_steps) % lc.publish_every == 0:
            if all(est.ready for est in self.learners.values()):
                self.encoder = Encoder.from_learners(self.learners, version=(self.encoder.version + 1) if self.encoder else 1,
                                                     trained_until_step=step, tile_shapes={n: self.tile_shape for n in self.learners},
                                                     ranges=self.ranges, psnr_db=self.psnr_db, raw_fraction=self.raw_fraction)
                self.encoder.keyframe_every, self.encoder.error_bound = self.keyframe_every, self.error_bound
        return out


def run_example(name, n_steps, psnr_db=None, share=True):
    """Rows ``(example, variable, target, min psnr, max psnr, ratio, coded steps)`` of one bundled example."""
    from stagelearn.analytics.config import LearnerConfig

    if EXAMPLES[name] is None:
        from stagelearn.sim_mocks.config import GyrokineticConfig

        sim_cfg, ranks, tile, lc, psnr, raw_fraction, kf, plotgap = GyrokineticConfig(), 4, (2, 2, 2, 4, 4), \
            LearnerConfig(), 42.0, 0.01, 0, 2
    else:
        from stagelearn.staging.config import load_config

        cfg = load_config(os.path.join(REPO, EXAMPLES[name]))
        sim_cfg, ranks, tile, lc = cfg.simulation, cfg.simulation.ranks, tuple(cfg.staging.tile_shape), cfg.learner
        psnr, raw_fraction, kf, plotgap = cfg.codec.psnr_db, cfg.codec.raw_fraction, cfg.codec.keyframes(), \
            cfg.simulation.plotgap
    if name == "gray_scott_ae":  # a short training keeps the benchmark minutes long
        lc = lc.model_copy(update={"autoencoder": lc.autoencoder.model_copy(update={"iterations_per_step": 3})})
    psnr = psnr if psnr_db is None else psnr_db
    sim = build_simulation(sim_cfg, MPI.COMM_SELF)
    run = StreamRun(lc, tile, psnr, raw_fraction, kf, share=share)
    per_var = {}
    for i in range(n_steps):
        if i:
            sim.advance(plotgap)
        fields = {k: np.asarray(v, dtype=np.float64) for k, v in sim.fields().items()}
        for var, res in run.step(i, fields, ranks).items():
            per_var.setdefault(var, []).append(res)
    return [(name, var, psnr, min(r[0] for r in rs), max(r[0] for r in rs),
             sum(r[1] for r in rs) / sum(r[2] for r in rs), len(rs)) for var, rs in sorted(per_var.items())]


def run_bench_field(name, n_frames, settings=(40.0, 50.0, 60.0), share=True):
    """Rows of one ``benchmarks/rate_distortion.py`` field (one block per frame, the demo's PCA settings)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from rd_datasets import DATASETS
    from stagelearn.analytics.config import LearnerConfig

    frames, _ = DATASETS[name](n_frames)
    tile = (8, 8) if frames[0].ndim == 2 else (4, 4, 4)
    if frames[0].ndim > 3:
        frames = [f.reshape(f.shape[0] * f.shape[1] * f.shape[2], *f.shape[3:]) for f in frames]
        tile = (4, 4, 4)
    rows = []
    for s in settings:
        run = StreamRun(LearnerConfig(warmup_steps=2, publish_every=10), tile, s, 0.01, share=share)
        rs = [res for i, f in enumerate(frames) for res in run.step(i, {"x": np.asarray(f, np.float64)}, 1).values()]
        rows.append((f"rd:{name}", "x", s, min(r[0] for r in rs), max(r[0] for r in rs),
                     sum(r[1] for r in rs) / sum(r[2] for r in rs), len(rs)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", nargs="*", default=list(EXAMPLES), help="bundled examples to run")
    ap.add_argument("--fields", nargs="*", default=list(BENCH_FIELDS), help="rate_distortion.py fields to run")
    ap.add_argument("--steps", type=int, default=20, help="output steps per example (default 20)")
    ap.add_argument("--frames", type=int, default=16, help="frames per benchmark field (default 16)")
    ap.add_argument("--plain-targets", action="store_true",
                    help="the plain per-block target of step_targets(comm, blocks, psnr_db), no budget sharing")
    ap.add_argument("--codec", choices=("learned", "stream"), default="learned",
                    help="learned: the PCA/autoencoder codec (default); stream: the stream codec, its old (commit "
                    "49d3564) and new rate control side by side (benchmarks/rate_control_stream.py)")
    ap.add_argument("--controllers", nargs="*", default=["old", "new"], help="--codec stream: controllers to run")
    args = ap.parse_args(argv)
    if args.codec == "stream":
        return stream_main(args)
    print(f"{'example':<18} {'variable':<8} {'target':>6} {'min-tgt':>8} {'max-tgt':>8} {'ratio':>8} {'steps':>5}  s")
    worst = (math.inf, -math.inf)
    jobs = [(run_example, n, args.steps) for n in args.examples] + [(run_bench_field, f, args.frames) for f in args.fields]
    for fn, name, n in jobs:
        t = time.perf_counter()
        for ex, var, target, lo, hi, ratio, count in fn(name, n, share=not args.plain_targets):
            worst = (min(worst[0], lo - target), max(worst[1], hi - target))
            print(f"{ex:<18} {var:<8} {target:6.1f} {lo - target:8.3f} {hi - target:8.3f} {ratio:8.2f} {count:5d}  "
                  f"{time.perf_counter() - t:.0f}", flush=True)
    print(f"all: achieved - target in [{worst[0]:.3f}, {worst[1]:.3f}] dB")
    return 0 if worst[0] >= 0.0 and worst[1] <= 0.5 else 1


def stream_main(args):
    """``--codec stream``: achieved - target per coded step (mean, min, max), ratio, encoder passes per block."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import rate_control_stream as rcs

    print(f"{'example':<16} {'ctl':<4} {'variable':<8} {'target':>6} {'mean-tgt':>8} {'min-tgt':>8} {'max-tgt':>8} "
          f"{'ratio':>9} {'enc/bl':>6} {'steps':>5}  encode s")
    worst = (math.inf, -math.inf)
    for name in args.examples:
        if name == "gray_scott_ae":  # the autoencoder's example: its codec is the learned one
            continue
        rows = rcs.example_rows(name, args.steps, EXAMPLES, REPO, split_blocks, args.controllers)
        rcs.print_rows(rows)
        worst = _worst(worst, rows)
    for f in args.fields:
        rows = rcs.field_rows(f, args.frames, controllers=args.controllers)
        rcs.print_rows(rows)
        worst = _worst(worst, rows)
    print(f"new: achieved - target in [{worst[0]:.3f}, {worst[1]:.3f}] dB")
    return 0 if worst[0] >= 0.0 and worst[1] <= 0.5 else 1


def _worst(worst, rows):
    for _, which, var, _, d, _, _, _ in rows:
        if which == "new" and var != "summary":
            worst = (min(worst[0], min(d)), max(worst[1], max(d)))
    return worst


if __name__ == "__main__":
    sys.exit(main())
