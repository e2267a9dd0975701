"""Learner update throughput: our IncrementalPCA.partial_fit vs sklearn's IncrementalPCA.

    python benchmarks/perf_learner.py

Same batches (20 batches of 1024 tiles x 64 features from Gray-Scott 64^3 V fields), all 64
components (sklearn's merge is then exact too); results must agree to 1e-6 relative.
Goal (issue 3): at least 2x faster.
"""

import time

import numpy as np
from mpi4py import MPI
from sklearn.decomposition import IncrementalPCA as SkIPCA

from stagelearn.analytics import IncrementalPCA
from stagelearn.analytics.tiling import to_tiles
from stagelearn.sim_mocks import GrayScott3D


def main():
    gs = GrayScott3D(64, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=MPI.COMM_SELF)
    gs.advance(1000)
    batches = []
    for _ in range(5):
        gs.advance(40)
        tiles = to_tiles(gs.fields()["V"], (4, 4, 4))
        batches += np.array_split(tiles, 4)
    ours, ref = IncrementalPCA(), SkIPCA(n_components=64)
    t0 = time.perf_counter()
    for b in batches:
        ours.partial_fit(b)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches:
        ref.partial_fit(b)
    t_ref = time.perf_counter() - t0
    rel = np.max(np.abs(ours.explained_variance_[:16] - ref.explained_variance_[:16]) / ref.explained_variance_[:16])
    print(f"batches: {len(batches)} x {batches[0].shape}; max relative difference of the 16 leading variances: {rel:.2e}")
    print(f"ours_partial_fit_s: {t_ours:.4f}")
    print(f"sklearn_partial_fit_s: {t_ref:.4f}")
    print(f"speedup_vs_sklearn: {t_ref / t_ours:.2f}")
    print(f"leading_variance_rel_diff: {rel:.2e}")


if __name__ == "__main__":
    main()
