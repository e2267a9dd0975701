"""Shared code of the solvers: compress every frame with one codec, time both directions."""

import time

import numpy as np


def run_framewise(frames, compress):
    """Apply ``compress(frame) -> (payload, decode)`` to every frame.

    Returns
    -------
    result : dict
        ``reconstruction``, ``n_bytes``, ``compress_s``, ``decompress_s``.
    """
    rec, n_bytes, tc, td = [], 0, 0.0, 0.0
    for frame in frames:
        t0 = time.perf_counter()
        payload, decode = compress(frame)
        t1 = time.perf_counter()
        rec.append(np.asarray(decode(), dtype=np.float32).reshape(frame.shape))
        t2 = time.perf_counter()
        n_bytes += len(payload)
        tc += t1 - t0
        td += t2 - t1
    return dict(reconstruction=np.stack(rec), n_bytes=n_bytes, compress_s=tc, decompress_s=td)
