from benchopt import BaseSolver


class Solver(BaseSolver):
    """Grid wavelets (PyWavelets bior4.4, 3 levels), uniform quantization (step 2 x rel_tol x range), zstd."""

    name = "Wavelet"
    sampling_strategy = "run_once"
    parameters = {"rel_tol": [1e-2, 1e-3, 1e-4]}
    requirements = ["pip::PyWavelets"]

    def set_objective(self, frames, blocks):
        self.frames = frames

    def run(self, _):
        from benchmark_utils import run_framewise
        from stagelearn.analytics.baselines import wavelet_threshold

        self.result = run_framewise(self.frames, lambda f: wavelet_threshold(f, 2 * self.rel_tol * float(f.max() - f.min())))

    def get_result(self):
        return self.result
