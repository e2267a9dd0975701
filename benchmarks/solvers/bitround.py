from benchmark_utils import FramewiseSolver
from benchopt import BaseSolver


class Solver(FramewiseSolver, BaseSolver):
    """Bit rounding to the real information content (Klöwer et al. 2021), then zstd.

    keepbits from xbitinfo's bitwise information (Python implementation) at ``inflevel`` of the
    information, per frame; rounding with numcodecs.BitRound.
    """

    name = "BitRound"
    parameters = {"inflevel": [0.99, 0.9999]}
    requirements = ["pip::numcodecs", "pip::xbitinfo"]

    def compress(self, frame):
        from stagelearn.analytics.baselines import bitround_zstd, keepbits_for_information

        return bitround_zstd(frame, keepbits_for_information(frame, self.inflevel))
