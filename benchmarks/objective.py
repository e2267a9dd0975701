"""benchopt objective: lossy compression of simulation fields, judged as users judge compressors.

Each solver compresses every frame of a dataset (a time series of fields, with its partition
into subdomains) and returns the reconstruction, the bytes it produced (side information
included) and its timings. The objective reports compression ratio, bit rate, PSNR, NRMSE, max
abs error, SSIM on slices, the relative error of the radially averaged power spectrum,
compression and decompression throughput, and, for distributed learners, bytes communicated.
"""

from benchopt import BaseObjective


class Objective(BaseObjective):
    name = "Lossy compression of simulation fields"
    url = "https://github.com/stagelearn/stagelearn"
    sampling_strategy = "run_once"
    requirements = []
    min_benchopt_version = "1.5"

    def set_data(self, frames, blocks, name):
        self.frames, self.blocks, self.name = frames, blocks, name

    def get_objective(self):
        return dict(frames=self.frames, blocks=self.blocks)

    def evaluate_result(self, reconstruction, n_bytes, compress_s, decompress_s, comm_bytes=0):
        import numpy as np

        from stagelearn.analytics.metrics import max_abs_error, nrmse, psnr, spectrum_relative_error, ssim_slices

        x, y = self.frames, np.asarray(reconstruction, dtype=np.float32).reshape(self.frames.shape)
        mb = x.nbytes / 1e6
        span = float(x.max() - x.min())
        p, n = psnr(x, y, span), nrmse(x, y, span)  # pooled over all frames (a lossless frame is no infinity)
        s = float(np.mean([ssim_slices(a, b, span) for a, b in zip(x, y)]))
        sp = float(np.mean([spectrum_relative_error(a, b) for a, b in zip(x, y)]))
        return dict(
            value=n,
            compression_ratio=x.nbytes / max(n_bytes, 1),
            bit_rate=8.0 * n_bytes / x.size,
            psnr=p,
            nrmse=n,
            max_abs_error=max_abs_error(x, y),
            ssim=s,
            spectrum_rel_error=sp,
            compress_MBps=mb / max(compress_s, 1e-9),
            decompress_MBps=mb / max(decompress_s, 1e-9),
            comm_bytes=float(comm_bytes),
        )

    def get_one_result(self):
        return dict(reconstruction=self.frames, n_bytes=self.frames.nbytes, compress_s=1.0, decompress_s=1.0)
