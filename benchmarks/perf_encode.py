"""Producer encode throughput: PCA transform coder vs zfpy vs pysz at matched PSNR, vs a numpy copy.

    python benchmarks/perf_encode.py

Field: Gray-Scott V, 64^3 float32 (tutorial parameters, 2000 time steps); the PCA basis is
learned on the state 100 steps earlier (as a pushed-back encoder would be). Goals (issue 3):
PCA encode >= 2x zfpy at matched PSNR and >= 25% of copy bandwidth.
"""

import time

import numpy as np
from mpi4py import MPI

from stagelearn.analytics import IncrementalPCA, TransformCodec
from stagelearn.analytics.baselines import sz3_at_psnr
from stagelearn.analytics.codec import encode_block
from stagelearn.analytics.metrics import psnr
from stagelearn.analytics.tiling import to_tiles
from stagelearn.sim_mocks import GrayScott3D


def best_time(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    import zfpy

    gs = GrayScott3D(64, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=MPI.COMM_SELF)
    gs.advance(1900)
    train = gs.fields()["V"].astype(np.float32)
    gs.advance(100)
    x = gs.fields()["V"].astype(np.float32)
    mb = x.nbytes / 1e6
    span = float(x.max() - x.min())
    est = IncrementalPCA().partial_fit(to_tiles(train, (4, 4, 4)))
    codec = TransformCodec(est.mean_, est.components_, 1.0)
    target = (span * 10 ** (-45 / 20)) ** 2
    t_pca, eb = best_time(lambda: encode_block(x, codec, (4, 4, 4), raw_fraction=0.01, target_mse=target))
    p = psnr(x, eb.reconstruction)
    # zfpy tolerance matched to the same PSNR by bisection
    lo, hi = 1e-7 * span, span
    for _ in range(30):
        mid = np.sqrt(lo * hi)
        if psnr(x, zfpy.decompress_numpy(zfpy.compress_numpy(x, tolerance=mid))) >= p:
            lo = mid
        else:
            hi = mid
    t_zfp, zbytes = best_time(lambda: zfpy.compress_numpy(x, tolerance=lo))
    p_zfp = psnr(x, zfpy.decompress_numpy(zbytes))
    szb, szrec = sz3_at_psnr(x, p)
    import pysz

    cfg = pysz.szConfig()
    cfg.errorBoundMode = pysz.szErrorBoundMode.PSNR
    cfg.psnrErrorBound = float(p)
    t_sz3, _ = best_time(lambda: pysz.sz.compress(x, cfg))  # compression only
    dst = np.empty_like(x)
    t_copy, _ = best_time(lambda: np.copyto(dst, x), repeat=20)
    print(f"field: 64^3 float32 ({mb:.2f} MB); PCA PSNR {p:.2f} dB ratio {x.nbytes / len(eb.payload):.1f}; "
          f"zfp PSNR {p_zfp:.2f} ratio {x.nbytes / len(zbytes):.1f}; sz3 PSNR {psnr(x, szrec):.2f} ratio {x.nbytes / szb:.1f}")
    print(f"pca_encode_MBps: {mb / t_pca:.1f}")
    print(f"zfp_encode_MBps: {mb / t_zfp:.1f}")
    print(f"sz3_encode_MBps: {mb / t_sz3:.1f}")
    print(f"copy_MBps: {mb / t_copy:.1f}")
    print(f"pca_over_zfp: {t_zfp / t_pca:.2f}")
    print(f"pca_over_sz3: {t_sz3 / t_pca:.2f}")
    print(f"pca_fraction_of_copy: {t_copy / t_pca:.4f}")


if __name__ == "__main__":
    main()
