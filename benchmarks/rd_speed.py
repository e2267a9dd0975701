"""Speed pass of ``benchmarks/rate_distortion.py`` (``--speed``): single-thread MB/s of sz3, zfp, the PCA
codec (``ours``) and the stream codec, the methods interleaved frame by frame on the same frames."""

from __future__ import annotations

import time

import numpy as np

from stagelearn.analytics import IncrementalPCA, TransformCodec
from stagelearn.analytics.codec import decode_block, encode_block
from stagelearn.analytics.stream_codec import StreamDecoder, StreamEncoder
from stagelearn.analytics.tiling import to_tiles


def speed_pass(ds, frames, setting=50.0, n=6, repeat=3, *, tiles, warmup):
    """Single-thread MB/s with the methods interleaved frame by frame (min of ``repeat`` runs per frame).

    A busy machine slows every method alike when they alternate this closely; the main sweep's
    per-method timings, taken minutes apart, are not comparable on a shared machine.
    """
    import copy

    import pysz
    import zfpy

    first = max(1, min(max(warmup + 1, len(frames) // 2 - n // 2), len(frames) - 1))
    chosen = range(first, min(len(frames), first + n))
    stream, intra = StreamEncoder("psnr", setting), StreamEncoder("psnr", setting, temporal=False)
    est = IncrementalPCA().partial_fit(to_tiles(frames[0], tiles[frames[0].ndim]))
    codec = TransformCodec(est.mean_, est.components_, 1.0)
    cfg = pysz.szConfig()
    cfg.errorBoundMode = pysz.szErrorBoundMode.PSNR
    cfg.psnrErrorBound = float(setting)
    times = {}
    for i, x in enumerate(frames[:chosen.stop]):
        if i not in chosen:
            stream.encode(x)
            intra.encode(x)
            continue
        target = float(x.max() - x.min()) ** 2 * 10 ** (-setting / 10)
        tol = float(x.max() - x.min()) * 10 ** (-setting / 20) * 1.5
        prev_x = frames[i - 1]
        state = {"stream": stream, "stream_intra": intra}
        for _ in range(repeat):
            for m in ("sz3", "zfp", "ours", "stream", "stream_intra"):
                if m == "sz3":
                    t = time.perf_counter(); c = pysz.sz.compress(x, cfg)[0]; te = time.perf_counter() - t
                    t = time.perf_counter(); pysz.sz.decompress(c, x.dtype, x.shape); td = time.perf_counter() - t
                elif m == "zfp":
                    t = time.perf_counter(); c = zfpy.compress_numpy(x, tolerance=tol); te = time.perf_counter() - t
                    t = time.perf_counter(); zfpy.decompress_numpy(c); td = time.perf_counter() - t
                elif m == "ours":
                    t = time.perf_counter()
                    c = encode_block(x, codec, tiles[x.ndim], raw_fraction=0.01, target_mse=target, prev=prev_x).payload
                    te = time.perf_counter() - t
                    t = time.perf_counter(); decode_block(c, codec, prev=prev_x); td = time.perf_counter() - t
                else:
                    enc = copy.deepcopy(state[m])
                    t = time.perf_counter(); fr = enc.encode(x); te = time.perf_counter() - t
                    dec = StreamDecoder()
                    dec.prev = state[m].prev
                    t = time.perf_counter(); dec.decode(fr.payload); td = time.perf_counter() - t
                old = times.setdefault((m, i), [np.inf, np.inf])
                old[0], old[1] = min(old[0], te), min(old[1], td)
        stream.encode(x)
        intra.encode(x)
    mb = frames[0].nbytes / 1e6
    rows = []
    for m in ("sz3", "zfp", "ours", "stream", "stream_intra"):
        te = sum(times[(m, i)][0] for i in chosen)
        td = sum(times[(m, i)][1] for i in chosen)
        rows.append({"dataset": ds, "method": m, "encode_mb_s": mb * len(chosen) / te,
                     "decode_mb_s": mb * len(chosen) / td, "frames": len(chosen), "setting": setting})
        print(f"  speed {m:14s} enc {rows[-1]['encode_mb_s']:7.1f} MB/s dec {rows[-1]['decode_mb_s']:7.1f} MB/s",
              flush=True)
    return rows
