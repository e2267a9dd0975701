"""Choose the default tile shape: compression ratio at a fixed PSNR target, per tile shape.

Gray-Scott 64^3 (the demo's parameters: the tutorial's settings-files.json), PCA learned on 5 snapshots (steps 1500-1900), tested on
step 2000; encoding as on the producers (rate control to the target, 1% raw tiles), V and U.

    python benchmarks/tile_shape.py
"""

import time

import numpy as np
from mpi4py import MPI

from stagelearn.analytics import IncrementalPCA, TransformCodec
from stagelearn.analytics.codec import encode_block
from stagelearn.analytics.tiling import to_tiles
from stagelearn.sim_mocks import GrayScott3D

PSNR_DB = 41.0
SHAPES = [(2, 2, 2), (2, 4, 4), (4, 4, 4), (2, 4, 8), (4, 4, 8), (8, 8, 8)]


def main():
    gs = GrayScott3D(64, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=MPI.COMM_SELF)
    gs.advance(1500)
    train = []
    for _ in range(5):
        train.append({k: v.astype(np.float32) for k, v in gs.fields().items()})
        gs.advance(100)
    test = {k: v.astype(np.float32) for k, v in gs.fields().items()}
    print(f"{'tile':>10} {'features':>8} {'ratio U':>8} {'ratio V':>8} {'ratio U+V':>9} {'PSNR U':>7} {'PSNR V':>7} {'encode ms':>9}")
    for shape in SHAPES:
        raw = sent = 0
        psnrs, t_enc = {}, 0.0
        for var in ("U", "V"):
            est = IncrementalPCA()
            for snap in train:
                est.partial_fit(to_tiles(snap[var], shape))
            codec = TransformCodec(est.mean_, est.components_, 1.0)
            x = test[var]
            span = float(x.max() - x.min())
            t = time.perf_counter()
            eb = encode_block(x, codec, shape, raw_fraction=0.01, target_mse=span**2 * 10 ** (-PSNR_DB / 10))
            t_enc += time.perf_counter() - t
            psnrs[var] = (x.nbytes / len(eb.payload), eb.stats.psnr_db)
            raw += x.nbytes
            sent += len(eb.payload)
        print(f"{'x'.join(map(str, shape)):>10} {int(np.prod(shape)):>8} {psnrs['U'][0]:>8.2f} {psnrs['V'][0]:>8.2f} "
              f"{raw / sent:>9.2f} {psnrs['U'][1]:>7.2f} {psnrs['V'][1]:>7.2f} {t_enc * 1e3:>9.0f}")


if __name__ == "__main__":
    main()
