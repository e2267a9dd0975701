"""Per-frame bytes and PSNR of the stream codec's two rate controllers on the same frames.

``StreamEncoder`` (the codec's own controller) against ``encode_stream_block`` (the run's,
``analytics/stream_rate.py``), both with a keyframe every ``--keyframe-every`` frames (0: only the
first), on the frames of a dataset of ``benchmarks/rate_distortion.py`` (default the gyrokinetic
mock; docs/codec.md, "Rate control in a run")::

    python benchmarks/controller_compare.py [--frames 32] [--psnr 50] [--keyframe-every 16] [--dataset heat2d]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rd_datasets  # noqa: E402

from stagelearn.analytics.stream_codec import StreamEncoder  # noqa: E402
from stagelearn.analytics.stream_model import StreamVariableModel  # noqa: E402
from stagelearn.analytics.stream_step import StreamStates, encode_stream_block  # noqa: E402
from stagelearn.analytics.temporal import PredictionChain  # noqa: E402


def psnr(x, rec):
    span = float(np.float64(x.max()) - np.float64(x.min()))
    return 10 * np.log10(span ** 2 / np.mean((rec.astype(np.float64) - x) ** 2))


def run_step(frames, db, keyframe_every):
    """Bytes, PSNR and whether it was coded on its own, per frame, of the run's controller."""
    chain, states, model = PredictionChain(keyframe_every or 10 ** 6), StreamStates(), StreamVariableModel()
    out = []
    for i, x in enumerate(frames):
        span = float(np.float64(x.max()) - np.float64(x.min()))
        code = encode_stream_block(x, model, step=i, chain=chain, chain_key="f",
                                   target_mse=span ** 2 * 10 ** (-db / 10), state=states)
        chain.end_step()
        out.append((len(code.payload), psnr(x, code.reconstruction), states.get("f").intra))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--psnr", type=float, default=50.0)
    ap.add_argument("--keyframe-every", type=int, default=16)
    ap.add_argument("--dataset", default="gyrokinetic", choices=sorted(rd_datasets.DATASETS))
    args = ap.parse_args(argv)
    out = rd_datasets.DATASETS[args.dataset](args.frames)
    frames = out[0] if isinstance(out, tuple) else out
    enc = StreamEncoder("psnr", args.psnr, keyframe_every=args.keyframe_every)
    run = run_step(frames, args.psnr, args.keyframe_every)
    print("| frame | StreamEncoder bytes | PSNR dB | run's controller: bytes | PSNR dB | coded on its own |")
    print("|---|---|---|---|---|---|")
    tot = [0, 0]
    for i, x in enumerate(frames):
        f = enc.encode(x)
        tot = [tot[0] + len(f.payload), tot[1] + run[i][0]]
        print(f"| {i} | {len(f.payload)} | {psnr(x, f.reconstruction):.2f} | {run[i][0]} | {run[i][1]:.2f} | "
              f"{'yes' if run[i][2] else ''} |")
    print(f"| total | {tot[0]} | | {tot[1]} | | |")


if __name__ == "__main__":
    main()
