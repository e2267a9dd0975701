"""Per-frame bytes and PSNR of the stream codec's two rate controllers on the same frames.

``StreamEncoder`` (the codec's own controller) against ``encode_stream_block`` (the run's, in
``analytics/stream_step.py``), both without keyframes after the first frame, on the gyrokinetic
mock's frames of ``benchmarks/rate_distortion.py`` (docs/codec.md, "Gaps")::

    python benchmarks/controller_compare.py [--frames 12] [--psnr 50]
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--psnr", type=float, default=50.0)
    args = ap.parse_args(argv)
    out = rd_datasets.gyrokinetic(args.frames)
    frames = out[0] if isinstance(out, tuple) else out
    enc = StreamEncoder("psnr", args.psnr)
    chain, states, model = PredictionChain(10 ** 6), StreamStates(), StreamVariableModel()
    print("| frame | StreamEncoder bytes | PSNR dB | encode_stream_block bytes | PSNR dB |")
    print("|---|---|---|---|---|")
    for i, x in enumerate(frames):
        f = enc.encode(x)
        span = float(np.float64(x.max()) - np.float64(x.min()))
        code = encode_stream_block(x, model, step=i, chain=chain, chain_key="f",
                                   target_mse=span ** 2 * 10 ** (-args.psnr / 10), state=states)
        chain.end_step()
        print(f"| {i} | {len(f.payload)} | {psnr(x, f.reconstruction):.2f} | {len(code.payload)} | "
              f"{psnr(x, code.reconstruction):.2f} |")


if __name__ == "__main__":
    main()
