from benchmark_utils import FramewiseSolver
from benchopt import BaseSolver


class Solver(FramewiseSolver, BaseSolver):
    """Grid wavelets (PyWavelets bior4.4, 3 levels), uniform quantization (step 2 x rel_tol x range), zstd."""

    name = "Wavelet"
    parameters = {"rel_tol": [1e-2, 1e-3, 1e-4]}
    requirements = ["pip::PyWavelets"]

    def compress(self, frame):
        from stagelearn.analytics.baselines import wavelet_threshold

        return wavelet_threshold(frame, 2 * self.rel_tol * float(frame.max() - frame.min()))
