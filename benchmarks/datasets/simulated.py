"""Fields of the mock simulations, with their time order and partition into subdomains."""

from benchopt import BaseDataset


class Dataset(BaseDataset):
    name = "simulated"
    parameters = {
        "simulation": ["gray_scott", "heat2d"],
        "size": [32, 64],
        "n_frames": [16],
        "n_parts": [4],
    }
    test_parameters = {"simulation": ["gray_scott", "heat2d"], "size": [16], "n_frames": [2], "n_parts": [2]}

    def get_data(self):
        import numpy as np
        from mpi4py import MPI

        from stagelearn.sim_mocks import AdvectionDiffusion2D, GrayScott3D
        from stagelearn.sim_mocks.decomposition import balanced_split

        if self.simulation == "gray_scott":
            sim = GrayScott3D(self.size, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=MPI.COMM_SELF)
            var, warm, gap = "V", 30 * self.size, 20
        else:
            sim = AdvectionDiffusion2D(self.size, self.size, kappa=0.1, velocity=(0.3, 0.1), amplitude=1.0,
                                       sigma=max(self.size / 40, 1.5), omega=0.01, decay=0.002, dt=1.0, comm=MPI.COMM_SELF)
            var, warm, gap = "T", 10 * self.size, 10
        sim.advance(warm)
        frames = []
        for _ in range(self.n_frames):
            frames.append(sim.fields()[var].astype(np.float32))
            sim.advance(gap)
        shape = frames[0].shape
        dims = MPI.Compute_dims(self.n_parts, len(shape))
        blocks = []
        for idx in np.ndindex(*dims):
            se = [balanced_split(n, d, i) for n, d, i in zip(shape, dims, idx)]
            blocks.append(([s for s, _ in se], [c for _, c in se]))
        return dict(frames=np.stack(frames), blocks=blocks, name=f"{self.simulation}{self.size}")
