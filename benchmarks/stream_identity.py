"""SHA-256 of the stream codec's reconstructions and payloads on fixed frames: a speed change must keep them.

    python benchmarks/stream_identity.py --out before.json            # on the code before a change
    python benchmarks/stream_identity.py --out after.json --check before.json

For gray_scott, heat2d, turbulence2d and gyrokinetic (4 frames each, in time order) it encodes with
``StreamEncoder`` in PSNR mode at 40, 50 and 60 dB (temporal chain, weights refitted each frame,
rate control included), with ``temporal=False``, with ``adaptive=True`` at 50 dB, and each frame
with ``encode_frame`` at a fixed step in ``abs`` mode; every payload is decoded and must give the
producer's reconstruction. It records the SHA-256 of each reconstruction (``rec/...``), payload
(``payload/...``) and the encoder's statistics and error sum (``stats/...``). ``--check`` compares
with an earlier file: reconstructions, statistics and payloads must match (exit 1 otherwise);
``--allow-payload-change`` accepts other payload bytes (a format version bump).
"""

from __future__ import annotations

import os

for _v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from stagelearn.analytics.stream_codec import StreamDecoder, StreamEncoder, decode_frame, encode_frame  # noqa: E402

DATASETS = ("gray_scott", "heat2d", "turbulence2d", "gyrokinetic")


def _h(a):
    if isinstance(a, (bytes, bytearray)):
        return hashlib.sha256(bytes(a)).hexdigest()
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def frames_of(name, n, cache):
    """``n`` frames of a dataset (cached as ``.npy`` under ``cache``)."""
    path = os.path.join(cache, f"{name}_{n}.npy")
    if os.path.exists(path):
        return list(np.load(path))
    from rd_datasets import DATASETS as ALL

    frames = ALL[name](n)[0]
    os.makedirs(cache, exist_ok=True)
    np.save(path, np.stack(frames))
    return frames


def _record(out, key, fr):
    """The hashes of one encoded frame: reconstruction, payload, statistics with the error sum."""
    out[f"rec/{key}"] = _h(fr.reconstruction)
    out[f"payload/{key}"] = _h(fr.payload)
    out[f"stats/{key}"] = _h(np.append(fr.stats.ravel(), [fr.sse, fr.n_outliers]))


def run(frames, ds, out):
    """Encode and decode ``frames`` every way; add the hashes to ``out``."""
    variants = [(f"psnr{p}", {"mode": "psnr", "target": p}) for p in (40.0, 50.0, 60.0)]
    variants += [("intra50", {"mode": "psnr", "target": 50.0, "temporal": False}),
                 ("adaptive50", {"mode": "psnr", "target": 50.0, "adaptive": True}),
                 ("abs", {"mode": "abs", "target": 1e-3 * float(np.ptp(frames[0]))})]
    for name, kw in variants:
        enc = StreamEncoder(kw.pop("mode"), kw.pop("target"), **kw)
        dec = StreamDecoder()
        for i, x in enumerate(frames):
            fr = enc.encode(x)
            rec = dec.decode(fr.payload)
            if rec.tobytes() != fr.reconstruction.tobytes():
                raise AssertionError(f"{ds}/{name}/{i}: decoder differs from the producer")
            _record(out, f"{ds}/{name}/{i}", fr)
    prev = None
    span = float(np.ptp(frames[0])) or 1.0
    for i, x in enumerate(frames):  # fixed steps, with and without temporal prediction, a pointwise bound
        for tag, step, eb in (("step_fine", span * 1e-4, 0.0), ("step_coarse", span * 3e-2, 0.0),
                              ("step_eb", span * 1e-3, span * 4e-4)):
            fr = encode_frame(x, step, prev=prev, eb_abs=eb)
            rec = decode_frame(fr.payload, prev)
            if rec.tobytes() != fr.reconstruction.tobytes():
                raise AssertionError(f"{ds}/{tag}/{i}: decoder differs from the producer")
            _record(out, f"{ds}/{tag}/{i}", fr)
        prev = encode_frame(x, span * 1e-4, prev=prev).reconstruction


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--check", default=None, help="an earlier output to compare with")
    ap.add_argument("--allow-payload-change", action="store_true",
                    help="with --check: accept other payload bytes (a format version bump)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--cache", default="/tmp/stream_identity_frames")
    args = ap.parse_args(argv)
    out = {}
    for ds in DATASETS:
        run([np.ascontiguousarray(f) for f in frames_of(ds, args.frames, args.cache)], ds, out)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
    print(f"{len(out)} hashes -> {args.out}")
    if args.check:
        with open(args.check) as f:
            ref = json.load(f)
        bad = {k: [k for k in ref if k.startswith(k_) and ref[k] != out.get(k)] for k_ in ("rec/", "stats/", "payload/")
               for k in [k_]}
        for kind, keys in bad.items():
            n = sum(k.startswith(kind) for k in ref)
            print(f"{kind:9s} {n - len(keys)}/{n} identical" + (f"; differ: {keys[:6]}" if keys else ""))
        if bad["rec/"] or bad["stats/"] or (bad["payload/"] and not args.allow_payload_change):
            sys.exit(1)


if __name__ == "__main__":
    main()
