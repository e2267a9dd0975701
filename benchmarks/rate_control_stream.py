"""Rate control of the stream codec (``codec.kind: stream``), the old and the new controller side by side.

    python benchmarks/rate_control.py --codec stream                          # demo + benchmark fields
    python benchmarks/rate_control.py --codec stream --examples gray_scott --fields --steps 60

Each output step's fields are cut into the producer ranks' blocks as in ``rate_control.py`` and
every block goes through the producers' one encode path
(:func:`~stagelearn.analytics.step_encode.encode_step_block` with the run's
:class:`~stagelearn.analytics.stream_step.StreamStates`), with the blend weights staging would
publish (:class:`~stagelearn.analytics.stream_learner.StreamWeightsLearner` fed, as
``staging/learning.py`` feeds it, the statistics of each decoded block against the same block at the
last step; an encoder after ``warmup_steps`` and every ``publish_every`` steps; the first
``warmup_steps`` steps travel raw). Each payload is decoded
(:func:`~stagelearn.analytics.stream_step.decode_stream_block`) and compared with the producer's
reconstruction bit for bit.

The same frames are coded by both controllers in one run: ``new`` is
:func:`stagelearn.analytics.stream_step._rate_controlled` as it is, ``old`` the controller of commit
49d3564 (:func:`legacy_rate_controlled`, copied here), swapped in for its pass. The achieved PSNR
of a step and variable is recomputed in float64 from the caller's values (the simulation's float64
field) and the decoded blocks over the variable's global range (what ``summary.json``'s per-step
``psnr_db_per_variable`` is); ``summary`` is the run summary's ``psnr_db``: the mean over
variables per step, then over steps.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
from mpi4py import MPI

from stagelearn.analytics import stream_step
from stagelearn.analytics.stream_codec import encode_frame
from stagelearn.analytics.stream_learner import StreamWeightsLearner
from stagelearn.analytics.stream_model import MAX_LEVELS, statistics
from stagelearn.analytics.step_encode import encode_step_block, step_targets
from stagelearn.analytics.stream_step import StreamStates, decode_stream_block
from stagelearn.analytics.temporal import PredictionChain

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rate_control import psnr64  # noqa: E402  (the same PSNR as the learned codec's rows)


def legacy_rate_controlled(x, prev, weights, target_mse, abs_bound, model, st):
    """The stream codec's rate control of commit 49d3564 (``analytics/stream_step.py``), verbatim but for
    its state, kept on ``st.legacy``: the step from the block's last ``MSE / (q^2/12)`` times a margin
    (0.85-0.99), up to 4 retries with a smaller step, then the pointwise bound ``sqrt(target_mse)``."""
    if not hasattr(st, "legacy"):
        st.legacy = {"mse_factor": {False: 1.0, True: 1.0}, "margin": 0.97}
    lg = st.legacy
    eb = float(abs_bound) if abs_bound is not None else 0.0
    kw = {"prev": prev, "weights": weights, "alpha": model.alpha, "beta": model.beta}
    if not (target_mse is not None and math.isfinite(target_mse) and target_mse > 0):
        return encode_frame(x, 2.0 * eb, eb_abs=eb, **kw), 1
    temporal = prev is not None
    step = lg["margin"] * math.sqrt(12.0 * target_mse / lg["mse_factor"][temporal])
    if eb > 0:
        step = min(step, 2.0 * eb)
    n = max(x.size, 1)
    for k in range(5):
        frame = encode_frame(x, step, eb_abs=eb, **kw)
        mse = frame.sse / n
        if mse > 0:
            lg["mse_factor"][temporal] = max(mse / (step ** 2 / 12.0), 0.1)
        if mse <= target_mse:
            lg["margin"] = min(0.99, lg["margin"] * 1.002)
            return frame, k + 1
        lg["margin"] = max(0.85, lg["margin"] * 0.97)
        step *= 0.98 * math.sqrt(target_mse / mse)
    e = math.sqrt(target_mse) if eb <= 0 else min(math.sqrt(target_mse), eb)
    return encode_frame(x, 2.0 * e, eb_abs=e, **kw), 6


CONTROLLERS = {"old": legacy_rate_controlled, "new": stream_step._rate_controlled}


class StreamCodecRun:
    """One run's variables through the stream codec as producers and staging handle them.

    Parameters
    ----------
    psnr_db : float
    warmup_steps, publish_every, keyframe_every : int
    """

    def __init__(self, psnr_db, warmup_steps, publish_every, keyframe_every):
        self.psnr_db, self.warmup, self.every = float(psnr_db), int(warmup_steps), int(publish_every)
        self.chain, self.states = PredictionChain(int(keyframe_every)), StreamStates()
        self.learners, self.last, self.model, self.seen, self.version = {}, {}, None, 0, 0
        self.encode_s = 0.0

    def step(self, step, fields, split):
        """Code one output step; ``{name: (psnr, raw_bytes, payload_bytes, encodes, blocks)}`` once coded."""
        blocks = {n: split(f) for n, f in fields.items()}
        out, decoded = {}, {}
        if self.model is not None:
            f32 = {n: [b.astype(np.float32) for b in bl] for n, bl in blocks.items()}
            targets, _ = step_targets(MPI.COMM_SELF, f32, self.psnr_db)
            for name, bl in blocks.items():
                recons, nbytes, encodes = [], 0, 0
                for r, given in enumerate(bl):
                    key = (name, r)
                    prev = self.chain.reference(key, given.shape)[1]
                    t0 = time.perf_counter()
                    code = encode_step_block(f32[name][r], self.model[name], step=step, chain=self.chain,
                                             chain_key=key, target_mse=targets[name], reference=given,
                                             header={"step": step, "variable": name, "rank": r},
                                             stream_state=self.states)
                    self.encode_s += time.perf_counter() - t0
                    dec = decode_stream_block(code.payload, prev)[0]
                    if dec.tobytes() != code.reconstruction.tobytes():
                        raise AssertionError(f"step {step} {name} block {r}: decoded block differs from the producer's")
                    recons.append(dec)
                    nbytes, encodes = nbytes + len(code.payload), encodes + code.encodes
                decoded[name] = recons
                out[name] = (psnr64(bl, recons), sum(4 * b.size for b in bl), nbytes, encodes, len(bl))
            self.chain.end_step()
        for name, bl in blocks.items():  # staging learns from every step (learning.learn_blocks)
            est = self.learners.setdefault(name, StreamWeightsLearner(None))
            stats = np.zeros((MAX_LEVELS, 13))
            for r, b in enumerate(bl):
                cur = decoded[name][r] if name in decoded else b.astype(np.float32)
                last = self.last.get((name, r))
                if last is not None and last.shape == cur.shape and last.dtype == cur.dtype:
                    stats += statistics(cur, last)
                self.last[(name, r)] = cur
            est.partial_fit_statistics(stats)
        self.seen += 1
        if self.seen >= self.warmup and (self.seen - self.warmup) % self.every == 0:
            self.model = {n: est.model() for n, est in self.learners.items()}
        return out


def stream_rows(label, frames_of, n_steps, psnr_db, warmup, every, keyframe_every, split, controllers=("old", "new")):
    """Rows ``(label, controller, variable, target, [achieved - target per step], ratio, encodes/block, encode s)``
    plus a ``summary`` row per controller (the per-step mean over variables)."""
    rows = []
    for which in controllers:
        stream_step._rate_controlled = CONTROLLERS[which]
        try:
            run, per_var, frames = StreamCodecRun(psnr_db, warmup, every, keyframe_every), {}, frames_of()
            for i in range(n_steps):
                fields = next(frames)
                for var, res in run.step(i, fields, split).items():
                    per_var.setdefault(var, []).append(res)
        finally:
            stream_step._rate_controlled = CONTROLLERS["new"]
        for var, rs in sorted(per_var.items()):
            rows.append((label, which, var, psnr_db, [r[0] - psnr_db for r in rs],
                         sum(r[1] for r in rs) / sum(r[2] for r in rs),
                         sum(r[3] for r in rs) / sum(r[4] for r in rs), None))
        per_step = [float(np.mean([rs[i][0] for rs in per_var.values()])) - psnr_db
                    for i in range(min(len(rs) for rs in per_var.values()))]
        all_rs = [r for rs in per_var.values() for r in rs]
        rows.append((label, which, "summary", psnr_db, per_step, sum(r[1] for r in all_rs) / sum(r[2] for r in all_rs),
                     sum(r[3] for r in all_rs) / sum(r[4] for r in all_rs), run.encode_s))
    return rows


def example_rows(name, n_steps, examples, repo, split_blocks, controllers=("old", "new")):
    """Stream-codec rows of one bundled example (its YAML's simulation, ranks, target, warm-up, keyframes)."""
    from stagelearn.sim_mocks.runner import build_simulation
    from stagelearn.staging.config import load_config

    if examples[name] is None:
        from stagelearn.analytics.config import LearnerConfig
        from stagelearn.sim_mocks.config import GyrokineticConfig

        sim_cfg, ranks, lc, psnr, kf, plotgap = GyrokineticConfig(), 4, LearnerConfig(), 42.0, 16, 2
    else:
        cfg = load_config(os.path.join(repo, examples[name]))
        sim_cfg, ranks, lc, psnr, plotgap = cfg.simulation, cfg.simulation.ranks, cfg.learner, cfg.codec.psnr_db, \
            cfg.simulation.plotgap
        kf = cfg.codec.keyframe_every if cfg.codec.keyframe_every is not None else 16

    def frames():
        sim = build_simulation(sim_cfg, MPI.COMM_SELF)
        for i in range(n_steps):
            if i:
                sim.advance(plotgap)
            yield {k: np.asarray(v, dtype=np.float64) for k, v in sim.fields().items()}

    return stream_rows(name, frames, n_steps, psnr, lc.warmup_steps, lc.publish_every, kf,
                       lambda f: split_blocks(f, ranks), controllers)


def field_rows(name, n_frames, settings=(40.0, 50.0, 60.0), controllers=("old", "new")):
    """Stream-codec rows of one ``benchmarks/rate_distortion.py`` field (one block, 2 raw warm-up frames,
    weights republished every 10 frames, a keyframe every 16)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from rd_datasets import DATASETS

    data, _ = DATASETS[name](n_frames)
    rows = []
    for s in settings:
        rows += stream_rows(f"rd:{name}", lambda: iter({"x": np.asarray(f, np.float64)} for f in data), len(data), s,
                            2, 10, 16, lambda f: [f], controllers)
    return rows


def print_rows(rows):
    """One line per row: achieved - target (mean, min, max over coded steps), ratio, encodes/block."""
    for label, which, var, target, d, ratio, enc, secs in rows:
        t = "" if secs is None else f"  {secs:7.2f}"
        print(f"{label:<16} {which:<4} {var:<8} {target:6.1f} {np.mean(d):8.3f} {min(d):8.3f} {max(d):8.3f} "
              f"{ratio:9.2f} {enc:6.3f} {len(d):5d}{t}", flush=True)
