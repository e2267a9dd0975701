from benchopt import BaseSolver


class Solver(BaseSolver):
    """Bit rounding to the real information content (Klöwer et al. 2021), then zstd.

    keepbits from xbitinfo's bitwise information (Python implementation) at ``inflevel`` of the
    information, per frame; rounding with numcodecs.BitRound.
    """

    name = "BitRound"
    sampling_strategy = "run_once"
    parameters = {"inflevel": [0.99, 0.9999]}
    requirements = ["pip::numcodecs", "pip::xbitinfo"]

    def set_objective(self, frames, blocks):
        self.frames = frames

    def run(self, _):
        from benchmark_utils import run_framewise
        from stagelearn.analytics.baselines import bitround_zstd, keepbits_for_information

        self.result = run_framewise(self.frames, lambda f: bitround_zstd(f, keepbits_for_information(f, self.inflevel)))

    def get_result(self):
        return self.result
