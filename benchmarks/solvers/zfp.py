from benchmark_utils import FramewiseSolver
from benchopt import BaseSolver


class Solver(FramewiseSolver, BaseSolver):
    """ZFP, fixed-accuracy mode: max abs error <= rel_tol x value range of the frame."""

    name = "ZFP"
    parameters = {"rel_tol": [1e-2, 1e-3, 1e-4]}
    requirements = ["pip::zfpy"]

    def compress(self, frame):
        from stagelearn.analytics.baselines import zfp_fixed_accuracy

        return zfp_fixed_accuracy(frame, self.rel_tol * float(frame.max() - frame.min()))
