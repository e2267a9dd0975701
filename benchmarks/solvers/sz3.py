from benchopt import BaseSolver


class Solver(BaseSolver):
    """SZ3 (pysz): ABS bound rel_tol x value range, or REL bound rel_tol (SZ3's value-range-relative mode)."""

    name = "SZ3"
    sampling_strategy = "run_once"
    parameters = {"mode": ["ABS", "REL"], "rel_tol": [1e-2, 1e-3, 1e-4]}
    requirements = ["pip::pysz"]

    def set_objective(self, frames, blocks):
        self.frames = frames

    def run(self, _):
        from benchmark_utils import run_framewise
        from stagelearn.analytics.baselines import sz3

        def compress(f):
            bound = self.rel_tol * float(f.max() - f.min()) if self.mode == "ABS" else self.rel_tol
            return sz3(f, bound, self.mode)

        self.result = run_framewise(self.frames, compress)

    def get_result(self):
        return self.result
