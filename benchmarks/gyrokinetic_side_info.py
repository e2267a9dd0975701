"""What the moment side information costs, for ``benchmarks/gyrokinetic_moments.py``: ``--side-bytes`` (format 1
against format 2 on the same decoded frames) and ``--explain-raw`` (what raw velocity slices cost and buy)."""

from __future__ import annotations

import numpy as np
import zstandard
from stagelearn.analytics.codec import decode_block
from stagelearn.analytics.payload import parse_payload
from stagelearn.analytics.qoi_side import protect
from stagelearn.analytics.step_encode import encode_step_block
from stagelearn.analytics.temporal import PredictionChain


def side_bytes(mock, frames, coded, ms, geo, tolerances, scales):
    """``--side-bytes``: side information per frame of each coded version of the frames, format 1 against format 2,
    each verified (every moment within tolerance at every point)."""
    for tol in tolerances:
        for name, decoded in coded.items():
            sizes = {}
            for fmt in (1, 2):
                total = 0
                for f, dec in zip(frames, decoded):
                    blob, _, checks = protect(f.reshape(geo.shape5), dec.reshape(geo.shape5), ms, [tol] * 3, scales,
                                              fmt=fmt)
                    assert all(c.ok for c in checks), (mock, name, tol, fmt)
                    total += len(blob)
                sizes[fmt] = total / len(frames)
            print(f"| {mock} | {tol:g} | {name} | {sizes[1]:.0f} | {sizes[2]:.0f} | {sizes[2] / sizes[1]:.2f} |", flush=True)


def explain_raw(model, f, ms, grid, scales, tol=1e-2, target_db=25.0):
    """Why raw slices do not pay with a moment guarantee: one frame coded with 1 % raw tiles and with none.

    Prints the payload's sections, the side information and the worst moment error after correction
    for both, and where the raw slices lie (histogram over the radial index)."""
    span = float(f.max() - f.min())
    for rf in (0.01, 0.0):
        code = encode_step_block(f.astype(np.float32), model, step=0, chain=PredictionChain(0), chain_key="f",
                                 target_mse=span ** 2 * 10 ** (-target_db / 10), raw_fraction=rf, reference=f)
        dec, header, _ = decode_block(code.payload, model.codec())
        _, sec = parse_payload(code.payload)
        blob, _, checks = protect(f, dec, ms, [tol] * 3, scales)
        print(f"  raw_fraction {rf:g}: payload {len(code.payload)} B (sections {({k: len(v) for k, v in sec.items()})}), "
              f"{header['n_raw']} raw slices, side information {len(blob)} B, worst moment error after correction "
              f"{max(c.worst for c in checks):.3f} x tolerance {tol:g}")
        if header["n_raw"]:
            idx = np.frombuffer(zstandard.ZstdDecompressor().decompress(sec["raw_index"]), np.int32)
            amp = f.max(axis=(1, 2))
            print(f"    raw slices per radial index: {np.bincount(idx // (grid[1] * grid[2]), minlength=grid[0]).tolist()}; "
                  f"their max f is above that of {100 * np.mean(amp[idx][:, None] > amp[None, :]):.1f} % of the slices")
