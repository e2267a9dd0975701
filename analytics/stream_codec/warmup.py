"""Compile the stream codec's numba kernels once, into numba's cache next to the modules.

With a cold cache every process that first codes or decodes a frame compiles the kernels
(~20-30 s of CPU each, 2026-12-07); in a run the producer and staging ranks would all do it at
once during the first coded steps, and on a 2-core machine the staging ranks then acknowledged no
step within ``timeouts.peer_s`` (30 s): the producers switched to their fallback files (nothing
lost, but the run ended with an error). ``make setup`` runs ``python -m
stagelearn.analytics.stream_codec.warmup`` after installing, so later processes load the compiled
kernels from the cache (numba recompiles by itself when a module changes).

The frames below go through the product's encode and decode path
(:func:`~stagelearn.analytics.stream_step.encode_stream_block`,
:func:`~stagelearn.analytics.stream_step.decode_stream_block`) in every combination the kernels are
specialised for: float32 and float64 fields, keyframes and predicted frames, one and four rANS
states (small and large payloads), the static and the adaptive entropy coder, and the pointwise
bound mode. Every reconstruction is checked against the producer's.
"""

from __future__ import annotations

import time

import numpy as np


def _frames(shape, dtype, n=3):
    """``n`` smooth drifting frames of ``shape`` (a few sine modes), in ``dtype``."""
    axes = np.meshgrid(*[np.linspace(0.0, 2.0 * np.pi, k) for k in shape], indexing="ij")
    return [sum(np.sin((i + 1) * a + 0.3 * t) for i, a in enumerate(axes)).astype(dtype) for t in range(n)]


def compile_kernels():
    """Code and decode a few frames through every kernel specialisation (fills numba's cache).

    Returns
    -------
    seconds : float
        Wall time spent (mostly compilation on a cold cache, ~1 s on a warm one).

    Raises
    ------
    RuntimeError
        If a decoded frame differs from the producer's reconstruction (a broken install).
    """
    from stagelearn.analytics.stream_model import StreamVariableModel
    from stagelearn.analytics.stream_step import StreamStates, decode_stream_block, encode_stream_block
    from stagelearn.analytics.temporal import PredictionChain

    t0 = time.perf_counter()
    for dtype in (np.float32, np.float64):
        for shape, db in (((12, 10, 8), 40.0), ((40, 40, 40), 70.0)):  # one rANS state; four
            for entropy in ("rans", "adaptive"):
                frames = _frames(shape, dtype)
                chain, states, model = PredictionChain(16), StreamStates(), StreamVariableModel(entropy=entropy)
                prev = None
                for t, x in enumerate(frames):
                    span = float(np.ptp(x))
                    kw = {"abs_bound": 1e-3 * span, "target_mse": None} if t == 2 else \
                        {"target_mse": span ** 2 * 10.0 ** (-db / 10.0)}
                    code = encode_stream_block(x, model, step=t, chain=chain, chain_key="v", state=states, **kw)
                    chain.end_step()
                    prev, _ = decode_stream_block(code.payload, prev)
                    if not np.array_equal(prev, code.reconstruction):
                        raise RuntimeError("stream codec warm-up: a decoded frame differs from the producer's "
                                           "reconstruction (broken install?)")
    return time.perf_counter() - t0


def main():
    """``python -m stagelearn.analytics.stream_codec.warmup``: compile, print the time."""
    print(f"stream codec kernels compiled and cached in {compile_kernels():.1f} s")


if __name__ == "__main__":
    main()
