from benchopt import BaseSolver


class Solver(BaseSolver):
    """ZFP, fixed-accuracy mode: max abs error <= rel_tol x value range of the frame."""

    name = "ZFP"
    sampling_strategy = "run_once"
    parameters = {"rel_tol": [1e-2, 1e-3, 1e-4]}
    requirements = ["pip::zfpy"]

    def set_objective(self, frames, blocks):
        self.frames = frames

    def run(self, _):
        from benchmark_utils import run_framewise
        from stagelearn.analytics.baselines import zfp_fixed_accuracy

        self.result = run_framewise(self.frames, lambda f: zfp_fixed_accuracy(f, self.rel_tol * float(f.max() - f.min())))

    def get_result(self):
        return self.result
