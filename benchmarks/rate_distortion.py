"""Rate-distortion on frame streams: our codecs against SZ3, SPERR and ZFP, every byte counted.

    python benchmarks/rate_distortion.py            # 32 frames per dataset (tens of minutes on one core)
    python benchmarks/rate_distortion.py --quick    # small grids, 8 frames, 3 settings (a few minutes)
    python benchmarks/rate_distortion.py --datasets gray_scott heat2d --methods sz3 stream
    python benchmarks/rate_distortion.py --speed ...        # also time the codecs interleaved (speed.csv)
    python benchmarks/rate_distortion.py --merge DIR1 DIR2  # summary of several runs' --out folders

For each dataset (``benchmarks/rd_datasets.py``) the frames go, in time order, through each method
at several quality settings; per setting the row gives the stream's PSNR (mean squared range over mean
MSE, each frame's own range), the ratio (raw float32 bytes over every byte sent: payloads, headers, side
information, models) and the single-thread encode and decode MB/s (of raw data). Methods:

- ``sz3``: pysz per frame (PSNR mode); ``sz3_closed_loop``: SZ3 on the difference to the previous
  *decompressed* frame (the first frame alone), PSNR target converted to the difference's range;
- ``sperr`` / ``sperr_closed_loop``: the same with SPERR (numcodecs-wasm-sperr, PSNR mode);
- ``sz3_axis_order`` / ``sz3_closed_loop_axis_order``: SZ3 on the field transposed as the stream codec
  would code its first frame (``rd_axis_order_view.py``: what the axis order alone gives SZ3);
- ``zfp``: zfpy fixed accuracy;
- ``ours`` / ``ours_frozen``: the product's PCA transform codec streamed as a run does: the first
  ``WARMUP`` frames raw (zstd), an IncrementalPCA learned online from the frames, published every
  ``PUBLISH_EVERY`` frames (``ours_frozen``: the first model only), each publication's float32
  mean and components counted, ``encode_block`` with temporal prediction from the previous
  reconstruction and the demo's ``raw_fraction`` 0.01;
- ``stream`` / ``stream_frozen`` / ``stream_intra``: :mod:`stagelearn.analytics.stream_codec`
  (interpolation + temporal prediction with blend weights refitted every frame / fitted once on
  the first frame pair / no temporal prediction), entropy-coded with static interleaved rANS (the
  product's default, ``codec.entropy: rans``);
- ``stream_adaptive``: ``stream`` with ``codec.entropy: adaptive``: each frame also coded with the
  context-adaptive binary coder, the shorter payload sent;
- ``stream_tuned``: ``stream`` with the level factors ``alpha``, ``beta`` chosen from frames 0 and 1
  by trial encodes at the setting's MSE (:mod:`stagelearn.analytics.stream_codec.tuning`, what
  staging would publish after seeing two steps), used from frame 2 on (the trial encodes' time is
  staging's, not counted in the encode MB/s);
- ``stream_step``: the same codec through the product adapter (``analytics/stream_step.py``): one
  block per frame in a ``PredictionChain`` with a keyframe every 16 frames, target MSE from the
  frame's range, the block envelope counted, decoded from ``ref_step`` as the output reader does;
  ``stream_step_tuned``: ``stream_step`` whose model's ``alpha``, ``beta`` are tuned as staging does
  (``StreamWeightsLearner.tune_factors``) on raw frames 0-1, used from frame 2 on;
  ``stream_step_retuned``: also re-tuned every 10 frames on the last two decoded frames (in situ
  staging sees the producers' reconstructions); the tuning time is staging's, not counted.

Fields of more than three axes are given to the baselines and the PCA codec as a 3-D view (leading
axes merged), so that SZ3 and SPERR code one volume; the stream codec's methods get the field as a
run's producer gives it (it chooses its own axis order, ``analytics/stream_codec/axis_order.py``); every
method's reconstruction is compared with the same values. Writes ``results/rate_distortion/summary.csv``
(``dataset, method, psnr_db, ratio, encode_mb_s, decode_mb_s, setting``) and ``summary.md`` (ratios
interpolated log-linearly at 40, 50 and 60 dB; ``*`` marks an extrapolation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rd_axis_order_view import run_in_axis_order  # noqa: E402
from rd_datasets import DATASETS  # noqa: E402
from rd_report import TARGETS, read_csv, write_speed, write_summary  # noqa: E402
from rd_speed import speed_pass  # noqa: E402

from stagelearn.analytics import IncrementalPCA, TransformCodec  # noqa: E402
from stagelearn.analytics.codec import decode_block, encode_block  # noqa: E402
from stagelearn.analytics.stream_codec import StreamDecoder, StreamEncoder  # noqa: E402
from stagelearn.analytics.stream_codec.interpolation import as_3d_shape  # noqa: E402
from stagelearn.analytics.stream_codec.tuning import choose_factors, trial_bytes  # noqa: E402
from stagelearn.analytics.tiling import to_tiles  # noqa: E402

try:
    from stagelearn.analytics.payload import encode_raw_block
except ImportError:  # older layout
    from stagelearn.analytics.codec import encode_raw_block

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "results", "rate_distortion")
WARMUP, PUBLISH_EVERY = 2, 10
TILES = {2: (8, 8), 3: (4, 4, 4)}
METHODS = ("sz3", "sz3_closed_loop", "sz3_axis_order", "sz3_closed_loop_axis_order", "sperr", "sperr_closed_loop",
           "zfp", "ours", "ours_frozen", "stream",
           "stream_adaptive", "stream_frozen", "stream_intra", "stream_tuned", "stream_step",
           "stream_step_tuned", "stream_step_retuned")


def stream_psnr(frames, recs):
    """PSNR of a stream: ``10 log10(mean of range^2 / mean of MSE)`` over its frames (each frame's own range)."""
    spans, mses = [], []
    for x, rec in zip(frames, recs):
        x = x.astype(np.float64)
        spans.append(float(x.max() - x.min()) ** 2)
        mses.append(float(np.mean((x - rec.astype(np.float64)) ** 2)))
    return math.inf if sum(mses) == 0 else 10 * math.log10(sum(spans) / sum(mses))


class Timer:
    """Per-frame encode and decode times; the rate uses the median frame (robust to a busy machine)."""

    def __init__(self):
        self.enc, self.dec = [], []

    def mb_s(self, frames):
        mb = sum(x.nbytes for x in frames) / 1e6 / len(frames)
        return mb / max(float(np.median(self.enc or [0])), 1e-12), mb / max(float(np.median(self.dec or [0])), 1e-12)


# ----------------------------------------------------------------------------- per-frame baselines
def _sz3(x, psnr_db):
    import pysz

    cfg = pysz.szConfig()
    cfg.errorBoundMode = pysz.szErrorBoundMode.PSNR
    cfg.psnrErrorBound = float(psnr_db)
    return lambda: pysz.sz.compress(np.ascontiguousarray(x), cfg)[0], \
        lambda c: pysz.sz.decompress(c, x.dtype, x.shape)[0]


def _sperr(x, psnr_db):
    from numcodecs_wasm_sperr import Sperr

    codec = Sperr(mode="psnr", psnr=float(psnr_db))
    return lambda: codec.encode(np.ascontiguousarray(x)), \
        lambda c: np.asarray(codec.decode(c)).reshape(x.shape)


def _zfp(x, tolerance):
    import zfpy

    return lambda: zfpy.compress_numpy(np.ascontiguousarray(x), tolerance=tolerance), zfpy.decompress_numpy


def _nbytes(c):
    return c.nbytes if isinstance(c, np.ndarray) else len(c)


def run_per_frame(frames, make, setting, closed_loop, timer):
    """A per-frame compressor, optionally in closed loop on the difference to the previous decoded frame."""
    total, recs, prev = 0, [], None
    for x in frames:
        if closed_loop and prev is not None:
            d = (x - prev).astype(np.float32)
            span_x, span_d = float(x.max() - x.min()), float(d.max() - d.min())
            if span_d == 0:
                d_rec, n = d, 8
            else:
                p = setting - 20 * math.log10(span_x / span_d) if span_x > 0 else setting
                enc, dec = make(d, p)
                t = time.perf_counter(); c = enc(); timer.enc.append(time.perf_counter() - t)
                t = time.perf_counter(); d_rec = dec(c); timer.dec.append(time.perf_counter() - t)
                n = _nbytes(c)
            rec = (prev + d_rec).astype(np.float32)
        else:
            enc, dec = make(x, setting)
            t = time.perf_counter(); c = enc(); timer.enc.append(time.perf_counter() - t)
            t = time.perf_counter(); rec = np.asarray(dec(c), dtype=np.float32).reshape(x.shape)
            timer.dec.append(time.perf_counter() - t)
            n = _nbytes(c)
        total += n
        recs.append(rec)
        prev = rec
    return total, recs


def run_zfp(frames, setting, timer):
    out, recs = 0, []
    for x in frames:
        tol = float(x.max() - x.min()) * 10 ** (-setting / 20) * 1.5
        enc, dec = _zfp(x, max(tol, 1e-30))
        t = time.perf_counter(); c = enc(); timer.enc.append(time.perf_counter() - t)
        t = time.perf_counter(); recs.append(dec(c)); timer.dec.append(time.perf_counter() - t)
        out += len(c)
    return out, recs


# ----------------------------------------------------------------------------- the product's PCA codec
def run_ours(frames, setting, timer, frozen):
    """The PCA transform codec as a run streams it (raw warm-up frames, online model, temporal prediction)."""
    tile = TILES[frames[0].ndim]
    est, codec, total, recs, prev = IncrementalPCA(), None, 0, [], None
    for i, x in enumerate(frames):
        if i >= WARMUP and (codec is None or (not frozen and (i - WARMUP) % PUBLISH_EVERY == 0)):
            codec = TransformCodec(est.mean_, est.components_, 1.0)  # staging publishes a model
            total += 4 * (est.mean_.size + est.components_.size)  # its float32 mean and basis
        if codec is None:
            t = time.perf_counter(); payload = encode_raw_block(x); timer.enc.append(time.perf_counter() - t)
            t = time.perf_counter(); rec = decode_block(payload)[0]; timer.dec.append(time.perf_counter() - t)
        else:
            target = float(x.max() - x.min()) ** 2 * 10 ** (-setting / 10)
            t = time.perf_counter()
            eb = encode_block(x, codec, tile, raw_fraction=0.01, target_mse=target, prev=prev)
            timer.enc.append(time.perf_counter() - t)
            payload = eb.payload
            t = time.perf_counter(); rec = decode_block(payload, codec, prev=prev)[0]
            timer.dec.append(time.perf_counter() - t)
        if codec is None or not frozen:
            est.partial_fit(to_tiles(x, tile))  # staging learns from the stream
        total += len(payload)
        recs.append(np.asarray(rec, dtype=np.float32).reshape(x.shape))
        prev = recs[-1]
    return total, recs


# ----------------------------------------------------------------------------- the new stream codec
def run_stream(frames, setting, timer, temporal=True, refit=True, tune=False, adaptive=False):
    enc = StreamEncoder("psnr", setting, temporal=temporal, fit=True, adaptive=adaptive)
    dec = StreamDecoder()
    total, recs = 0, []
    for i, x in enumerate(frames):
        if not refit and i >= 2:
            enc.fit = False  # keep the weights fitted on the first frame pair
        if tune and i == 2:  # staging has seen frames 0 and 1: it tunes alpha, beta and publishes them
            span = float(np.float64(frames[1].max()) - np.float64(frames[1].min())) or 1.0
            costs = trial_bytes([(frames[0], frames[1])], span ** 2 * 10 ** (-setting / 10))
            enc.alpha, enc.beta = choose_factors(costs)
        t = time.perf_counter(); fr = enc.encode(x); timer.enc.append(time.perf_counter() - t)
        t = time.perf_counter(); rec = dec.decode(fr.payload); timer.dec.append(time.perf_counter() - t)
        if not np.array_equal(rec.view(np.uint32), fr.reconstruction.view(np.uint32)):
            raise AssertionError("stream codec: decoder differs from the producer's reconstruction")
        total += len(fr.payload)
        recs.append(rec)
    return total, recs


def run_stream_step(frames, setting, timer, keyframe_every=16, tune_every=0):
    """The product adapter (analytics/stream_step.py) on one block per frame, as a producer runs it:
    a PredictionChain with a keyframe every ``keyframe_every`` steps, the target MSE from the frame's
    range, the block envelope counted, and a reader that decodes each block from its ``ref_step``."""
    from stagelearn.analytics.stream_model import StreamVariableModel
    from stagelearn.analytics.stream_step import StreamStates, decode_stream_block, encode_stream_block
    from stagelearn.analytics.temporal import PredictionChain

    from stagelearn.analytics.stream_learner import StreamWeightsLearner

    chain, states, model = PredictionChain(keyframe_every), StreamStates(), StreamVariableModel()
    total, recs, prev, learner = 0, [], None, StreamWeightsLearner()
    for i, x in enumerate(frames):
        target = (float(np.float64(x.max()) - np.float64(x.min())) or 1.0) ** 2 * 10 ** (-setting / 10)
        if tune_every and i >= 2 and (i == 2 or (tune_every > 0 and (i - 2) % tune_every == 0)):
            pair = (frames[0], frames[1]) if i == 2 else (recs[i - 2], recs[i - 1])  # what staging holds
            t = time.perf_counter(); model.alpha, model.beta = learner.tune_factors([pair], target)
            print(f"    frame {i}: alpha, beta = {model.alpha}, {model.beta} ({time.perf_counter() - t:.2f} s)")
        t = time.perf_counter()
        code = encode_stream_block(x, model, step=i, chain=chain, chain_key="v", target_mse=target, state=states)
        timer.enc.append(time.perf_counter() - t)
        chain.end_step()
        t = time.perf_counter()
        rec, _ = decode_stream_block(code.payload, prev)
        timer.dec.append(time.perf_counter() - t)
        if rec.tobytes() != code.reconstruction.tobytes():
            raise AssertionError("stream_step: decoder differs from the producer's reconstruction")
        total += len(code.payload)
        recs.append(rec)
        prev = rec
    return total, recs


def run_method(method, frames, setting, given=None):
    """``frames``: the 3-D views; ``given``: the frames as the simulation gives them (the stream codec's input)."""
    timer = Timer()
    view = frames
    if (method.startswith("stream") or method.endswith("_axis_order")) and given is not None:
        frames = given
    if method == "sz3":
        total, recs = run_per_frame(frames, _sz3, setting, False, timer)
    elif method == "sz3_closed_loop":
        total, recs = run_per_frame(frames, _sz3, setting, True, timer)
    elif method in ("sz3_axis_order", "sz3_closed_loop_axis_order"):
        closed = method == "sz3_closed_loop_axis_order"
        total, recs = run_in_axis_order(frames, lambda f: run_per_frame(f, _sz3, setting, closed, timer))
    elif method == "sperr":
        total, recs = run_per_frame(frames, _sperr, setting, False, timer)
    elif method == "sperr_closed_loop":
        total, recs = run_per_frame(frames, _sperr, setting, True, timer)
    elif method == "zfp":
        total, recs = run_zfp(frames, setting, timer)
    elif method in ("ours", "ours_frozen"):
        total, recs = run_ours(frames, setting, timer, frozen=method == "ours_frozen")
    elif method == "stream":
        total, recs = run_stream(frames, setting, timer)
    elif method == "stream_adaptive":
        total, recs = run_stream(frames, setting, timer, adaptive=True)
    elif method == "stream_frozen":
        total, recs = run_stream(frames, setting, timer, refit=False)
    elif method == "stream_intra":
        total, recs = run_stream(frames, setting, timer, temporal=False)
    elif method == "stream_tuned":
        total, recs = run_stream(frames, setting, timer, tune=True)
    elif method == "stream_step":
        total, recs = run_stream_step(frames, setting, timer)
    elif method in ("stream_step_tuned", "stream_step_retuned"):
        total, recs = run_stream_step(frames, setting, timer, tune_every=-1 if method.endswith("_tuned") else 10)
    else:
        raise ValueError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    raw = sum(x.nbytes for x in frames)
    enc, dec = timer.mb_s(frames)
    frames, recs = view, [np.reshape(r, x.shape) for r, x in zip(recs, view)]
    return {"psnr_db": stream_psnr(frames, recs), "ratio": raw / total, "encode_mb_s": enc, "decode_mb_s": dec}


def sweep(ds, method, frames, settings, extra=2, given=None):
    """Run ``method`` at each setting, then up to ``extra`` settings 10 dB beyond either end while the
    measured PSNRs do not bracket 40 and 60 dB (a baseline's PSNR mode can overshoot by 15 dB)."""
    out = []

    def one(s):
        r = run_method(method, frames, s, given)
        out.append({"dataset": ds, "method": method, "setting": s, **r})
        print(f"  {method:18s} setting {s:4.0f}: PSNR {r['psnr_db']:6.2f} ratio {r['ratio']:8.2f} "
              f"enc {r['encode_mb_s']:7.1f} MB/s dec {r['decode_mb_s']:7.1f} MB/s", flush=True)

    for s in settings:
        one(s)
    lo, hi = min(settings), max(settings)
    for _ in range(extra):
        if min(r["psnr_db"] for r in out) > TARGETS[0] - 1:
            lo -= 10
            one(lo)
    for _ in range(extra):
        if max(r["psnr_db"] for r in out) < TARGETS[-1] + 1:
            hi += 10
            one(hi)
    return out


def warm_up():
    """Compile the stream codec's numba kernels (and fill their cache) outside the timed runs."""
    rng = np.random.default_rng(0)
    for shape in ((8, 8), (4, 4, 4)):
        for dtype in (np.float32,):
            x = rng.standard_normal(shape).astype(dtype)
            run_stream([x, x + 0.1], 40.0, Timer())
            run_stream([x, x + 0.1], 40.0, Timer(), temporal=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small grids, 8 frames, 3 settings")
    ap.add_argument("--frames", type=int, default=None, help="frames per dataset (default 32; --quick 8)")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--settings", nargs="+", type=float, default=None,
                    help="PSNR settings in dB (default 35 40 45 50 55 60 65; --quick 40 50 60)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--speed", action="store_true",
                    help="also time sz3, zfp, ours and stream interleaved on 6 frames at 50 dB (speed.csv)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                    help="only rewrite --out's summary from the summary.csv and meta.json of these output folders")
    args = ap.parse_args(argv)
    if args.merge:  # later folders replace earlier ones' rows of the same dataset and method
        by, meta, speed = {}, {}, {}
        for d in args.merge:
            new = {}
            for r in read_csv([os.path.join(d, "summary.csv")]):
                new.setdefault((r["dataset"], r["method"]), []).append(r)
            by.update(new)
            if os.path.exists(os.path.join(d, "speed.csv")):
                for r in read_csv([os.path.join(d, "speed.csv")]):
                    speed[(r["dataset"], r["method"])] = r
            with open(os.path.join(d, "meta.json")) as f:
                for ds, m in json.load(f).items():
                    meta.setdefault(ds, m)
                    meta[ds].setdefault("commands", []).append(m.get("command", ""))
        rows = [r for rs in by.values() for r in rs]
        commands = sorted({c for m in meta.values() for c in m.get("commands", []) if c})
        print(write_summary(rows, meta, args.out, "`; `".join(commands), list(speed.values())))
        if speed:
            write_speed(list(speed.values()), args.out)
        return
    warm_up()
    n_frames = args.frames or (8 if args.quick else 32)
    settings = args.settings or ([40.0, 50.0, 60.0] if args.quick else [35.0, 40.0, 45.0, 50.0, 55.0, 60.0, 65.0])
    rows, meta, speed = [], {}, []
    for ds in args.datasets:
        frames, desc = DATASETS[ds](n_frames, quick=args.quick)
        shape, given = frames[0].shape, frames
        frames = [np.ascontiguousarray(f.reshape(as_3d_shape(shape)) if f.ndim > 3 else f) for f in frames]
        meta[ds] = {"description": desc, "frames": len(frames), "shape": list(shape),
                    "raw_mb": sum(f.nbytes for f in frames) / 1e6}
        print(f"{ds}: {desc}, {len(frames)} frames {shape}", flush=True)
        for m in args.methods:
            try:
                rows += sweep(ds, m, frames, settings, given=given)
            except ImportError as err:
                print(f"  {m}: skipped ({err})", flush=True)
        if args.speed:
            speed += speed_pass(ds, frames, tiles=TILES, warmup=WARMUP)
    command = ("python benchmarks/rate_distortion.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    for m in meta.values():
        m["command"] = command
    print(write_summary(rows, meta, args.out, command, speed))
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    if speed:
        write_speed(speed, args.out)


if __name__ == "__main__":
    main()
