"""Single-thread encode/decode MB/s of the stream codec against SZ3 (pysz), in the same run.

    python benchmarks/stream_speed.py                        # gray_scott 64^3 and heat2d 256^2, 50 dB
    python benchmarks/stream_speed.py --datasets heat2d --psnr 40 --repeat 5
    python benchmarks/stream_speed.py --datasets turbulence2d allen_cahn gyrokinetic --repeat 5

Fields of more than three axes (the gyrokinetic mock) are given to every method as the same 3-D view
(leading axes merged: the view the stream codec codes anyway), as in ``rate_distortion.py``.

Methods, interleaved frame by frame, each frame timed ``--repeat`` times from the same state and
the minimum kept; the time is the calling thread's CPU time (``time.thread_time``: other processes
on a shared machine do not count; every method runs in the calling thread with one thread):

- ``sz3``: pysz, PSNR mode at ``--psnr`` (per frame);
- ``stream``: the prototype API (``StreamEncoder("psnr")``, temporal prediction, weights refitted
  each frame) and ``StreamDecoder``;
- ``stream_intra``: the same without temporal prediction;
- ``stream_step``: the product adapter (``encode_stream_block`` with a ``PredictionChain``, target
  MSE from the frame's range, error statistics against the caller's values, the block envelope;
  ``decode_stream_block``).

Threads are pinned to one (numba, OpenMP, OpenBLAS) before numpy is imported. Writes
``<out>/stream_speed.csv`` and ``<out>/summary.md`` (the command first) and, with ``--hashes FILE``,
the SHA-256 of every payload and, with ``--recs FILE``, of every reconstruction (compare two runs'
files: a speed-up that changes the byte format must still give the same reconstructions). The
column ``formats`` counts the timed frames per payload format version (``frame_info``): the encoder
may pick another entropy coder per frame, with another speed.
"""

from __future__ import annotations

import os

for _v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import collections  # noqa: E402
import copy  # noqa: E402
import csv  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from rd_datasets import DATASETS  # noqa: E402

from stagelearn.analytics.stream_codec import StreamDecoder, StreamEncoder, frame_info  # noqa: E402
from stagelearn.analytics.stream_codec.interpolation import as_3d_shape  # noqa: E402
from stagelearn.analytics.stream_model import StreamVariableModel  # noqa: E402
from stagelearn.analytics.stream_step import StreamStates, decode_stream_block, encode_stream_block  # noqa: E402
from stagelearn.analytics.temporal import PredictionChain  # noqa: E402

METHODS = ("sz3", "stream", "stream_intra", "stream_step")


class _Step:
    """The product adapter on one block, with its chain and state (deep-copyable)."""

    def __init__(self, psnr_db):
        self.psnr_db, self.chain, self.states, self.model = psnr_db, PredictionChain(10 ** 6), StreamStates(), \
            StreamVariableModel()
        self.prev, self.t = None, 0

    def encode(self, x):
        span = float(np.float64(x.max()) - np.float64(x.min())) or 1.0
        code = encode_stream_block(x, self.model, step=self.t, chain=self.chain, chain_key="v",
                                   target_mse=span ** 2 * 10 ** (-self.psnr_db / 10), state=self.states)
        return code

    def commit(self, code):
        self.chain.end_step()
        self.prev, self.t = code.reconstruction, self.t + 1


def _sz3(psnr_db):
    import pysz

    cfg = pysz.szConfig()
    cfg.errorBoundMode = pysz.szErrorBoundMode.PSNR
    cfg.psnrErrorBound = float(psnr_db)
    return cfg


def run(ds, frames, psnr_db, timed, repeat, hashes, recs=None):
    """Time every method on the last ``timed`` frames (the earlier ones only build the state)."""
    import pysz

    cfg = _sz3(psnr_db)
    state = {"stream": StreamEncoder("psnr", psnr_db), "stream_intra": StreamEncoder("psnr", psnr_db, temporal=False),
             "stream_step": _Step(psnr_db)}
    times = {m: [0.0, 0.0] for m in METHODS}
    nbytes = {m: 0 for m in METHODS}
    formats = {m: collections.Counter() for m in METHODS}
    first = len(frames) - timed
    for i, x in enumerate(frames):
        best = {m: [np.inf, np.inf, None] for m in METHODS}
        for _ in range(repeat if i >= first else 1):
            for m in METHODS:
                if m == "sz3":
                    x3 = np.ascontiguousarray(x.reshape(as_3d_shape(x.shape))) if x.ndim > 3 else x
                    t = time.thread_time(); c = pysz.sz.compress(x3, cfg)[0]; te = time.thread_time() - t
                    t = time.thread_time(); pysz.sz.decompress(c, x3.dtype, x3.shape); td = time.thread_time() - t
                    out, size = None, len(bytes(c)) if not hasattr(c, "nbytes") else int(c.nbytes)
                elif m == "stream_step":
                    enc = copy.deepcopy(state[m])
                    t = time.thread_time(); code = enc.encode(x); te = time.thread_time() - t
                    t = time.thread_time(); rec, _ = decode_stream_block(code.payload, state[m].prev)
                    td = time.thread_time() - t
                    if rec.tobytes() != code.reconstruction.tobytes():
                        raise AssertionError(f"{ds}: stream_step decoder differs from the producer's reconstruction")
                    out, size = (enc, code), len(code.payload)
                else:
                    enc = copy.deepcopy(state[m])
                    t = time.thread_time(); fr = enc.encode(x); te = time.thread_time() - t
                    dec = StreamDecoder()
                    dec.prev = state[m].prev
                    t = time.thread_time(); rec = dec.decode(fr.payload); td = time.thread_time() - t
                    out, size = (enc, fr), len(fr.payload)
                b = best[m]
                b[0], b[1] = min(b[0], te), min(b[1], td)
                b[2] = (out, size)
        for m in METHODS:
            out, size = best[m][2]
            if m == "stream_step":
                state[m] = out[0]
                state[m].commit(out[1])
                payload = out[1].payload
            elif m != "sz3":
                state[m] = out[0]
                payload = out[1].payload
            if m != "sz3" and hashes is not None:
                hashes[f"{ds}/{m}/{i}"] = hashlib.sha256(payload).hexdigest()
            if m != "sz3" and recs is not None:
                rec = state[m].prev
                recs[f"{ds}/{m}/{i}"] = hashlib.sha256(np.ascontiguousarray(rec).tobytes()).hexdigest()
            if m in ("stream", "stream_intra") and i >= first:
                formats[m][int(frame_info(payload).get("version", 1))] += 1
            if i >= first:
                times[m][0] += best[m][0]
                times[m][1] += best[m][1]
                nbytes[m] += size
    mb = sum(x.nbytes for x in frames[first:]) / 1e6
    rows = []
    for m in METHODS:
        rows.append({"dataset": ds, "method": m, "psnr_setting": psnr_db, "frames": timed,
                     "encode_mb_s": mb / times[m][0], "decode_mb_s": mb / times[m][1],
                     "ratio": mb * 1e6 / max(nbytes[m], 1),
                     "formats": " ".join(f"v{v}:{n}" for v, n in sorted(formats[m].items()))})
    sz = rows[0]
    for r in rows:
        r["encode_vs_sz3"] = r["encode_mb_s"] / sz["encode_mb_s"]
        r["decode_vs_sz3"] = r["decode_mb_s"] / sz["decode_mb_s"]
        print(f"  {ds:12s} {r['method']:13s} enc {r['encode_mb_s']:7.1f} MB/s ({r['encode_vs_sz3']:.2f}x sz3) "
              f"dec {r['decode_mb_s']:7.1f} MB/s ({r['decode_vs_sz3']:.2f}x) ratio {r['ratio']:8.1f} {r['formats']}",
              flush=True)
    return rows


def warm_up():
    """Compile the numba kernels outside the timed runs."""
    x = np.random.default_rng(0).standard_normal((6, 5, 4)).astype(np.float32)
    for frames in ([x, x + 0.1], [x[0], x[0] + 0.1]):
        run("warm-up", frames, 40.0, 1, 1, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["gray_scott", "heat2d"], choices=sorted(DATASETS))
    ap.add_argument("--frames", type=int, default=10, help="frames per dataset (the last --timed are timed)")
    ap.add_argument("--timed", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--psnr", type=float, default=50.0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "results", "stream_speed"))
    ap.add_argument("--hashes", default=None, help="write the payloads' SHA-256 here (JSON)")
    ap.add_argument("--recs", default=None, help="write the reconstructions' SHA-256 here (JSON)")
    args = ap.parse_args(argv)
    warm_up()
    rows, hashes, recs = [], ({} if args.hashes else None), ({} if args.recs else None)
    for ds in args.datasets:
        frames, desc = DATASETS[ds](args.frames)
        # more than three axes: SZ3 gets the 3-D view (leading axes merged; pysz takes at most 4), the stream
        # codec the field as a run's producer gives it (it chooses its own axis order; as rate_distortion.py)
        print(f"{ds}: {desc}", flush=True)
        rows += run(ds, frames, args.psnr, min(args.timed, len(frames) - 1), args.repeat, hashes, recs)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "stream_speed.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    command = f"python benchmarks/stream_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}".strip()
    lines = [f"Command: `{command}`", "",
             f"Single thread (numba, OpenMP, OpenBLAS), {args.psnr:g} dB, {args.timed} frames timed, each frame "
             f"the minimum of {args.repeat} runs of the calling thread's CPU time, the methods interleaved frame by "
             "frame; `/ sz3` is the MB/s over SZ3's on the same frames in this run.", "",
             "| dataset | method | encode MB/s | decode MB/s | encode / sz3 | decode / sz3 | ratio | formats |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['method']} | {r['encode_mb_s']:.0f} | {r['decode_mb_s']:.0f} | "
              f"{r['encode_vs_sz3']:.2f} | {r['decode_vs_sz3']:.2f} | {r['ratio']:.1f} | {r['formats']} |"
              for r in rows]
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for path, table in ((args.hashes, hashes), (args.recs, recs)):
        if path:
            with open(path, "w") as f:
                json.dump(table, f, indent=0, sort_keys=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
