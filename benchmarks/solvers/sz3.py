from benchmark_utils import FramewiseSolver
from benchopt import BaseSolver


class Solver(FramewiseSolver, BaseSolver):
    """SZ3 (pysz): ABS bound rel_tol x value range, or REL bound rel_tol (SZ3's value-range-relative mode)."""

    name = "SZ3"
    parameters = {"mode": ["ABS", "REL"], "rel_tol": [1e-2, 1e-3, 1e-4]}
    requirements = ["pip::pysz"]

    def compress(self, frame):
        from stagelearn.analytics.baselines import sz3

        bound = self.rel_tol * float(frame.max() - frame.min()) if self.mode == "ABS" else self.rel_tol
        return sz3(frame, bound, self.mode)
