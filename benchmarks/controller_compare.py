"""Per-frame bytes and PSNR of the stream codec's two rate controllers on the same frames.

``StreamEncoder`` (the codec's own controller) against ``encode_stream_block`` (the run's,
``analytics/stream_rate.py``, with its learned keyframe offset, and with the offset off), all with
a keyframe every ``--keyframe-every`` frames (0: only the first), on the gyrokinetic mock's frames
of ``benchmarks/rate_distortion.py`` (docs/codec.md, "Rate control in a run")::

    python benchmarks/controller_compare.py [--frames 32] [--psnr 50] [--keyframe-every 16]
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


def run_step(frames, db, keyframe_every, offset):
    """Bytes, PSNR and keyframe offset (dB) per frame of the run's controller (offset on or off)."""
    chain, states, model = PredictionChain(keyframe_every or 10 ** 6), StreamStates(offset), StreamVariableModel()
    out = []
    for i, x in enumerate(frames):
        span = float(np.float64(x.max()) - np.float64(x.min()))
        code = encode_stream_block(x, model, step=i, chain=chain, chain_key="f",
                                   target_mse=span ** 2 * 10 ** (-db / 10), state=states)
        chain.end_step()
        out.append((len(code.payload), psnr(x, code.reconstruction), states.get("f").key_db))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--psnr", type=float, default=50.0)
    ap.add_argument("--keyframe-every", type=int, default=16)
    args = ap.parse_args(argv)
    out = rd_datasets.gyrokinetic(args.frames)
    frames = out[0] if isinstance(out, tuple) else out
    enc = StreamEncoder("psnr", args.psnr, keyframe_every=args.keyframe_every)
    learned = run_step(frames, args.psnr, args.keyframe_every, True)
    plain = run_step(frames, args.psnr, args.keyframe_every, False)
    print("| frame | StreamEncoder bytes | PSNR dB | run's, offset off: bytes | PSNR dB "
          "| run's, learned offset: bytes | PSNR dB | keyframe offset dB |")
    print("|---|---|---|---|---|---|---|---|")
    tot = [0, 0, 0]
    for i, x in enumerate(frames):
        f = enc.encode(x)
        tot = [tot[0] + len(f.payload), tot[1] + plain[i][0], tot[2] + learned[i][0]]
        print(f"| {i} | {len(f.payload)} | {psnr(x, f.reconstruction):.2f} | {plain[i][0]} | {plain[i][1]:.2f} | "
              f"{learned[i][0]} | {learned[i][1]:.2f} | {learned[i][2]:.1f} |")
    print(f"| total | {tot[0]} | | {tot[1]} | | {tot[2]} | | |")


if __name__ == "__main__":
    main()
