"""Any BP5 file written by an ADIOS2 code: ``dataset: bp5_file[path=out.bp,variable=T]``.

Every step of the variable becomes a frame; the blocks of the first step are the partition.
With no ``path`` (the test configuration), a small sample file is first written with ADIOS2
(Gray-Scott 16^3, V, 3 steps, 2 blocks) so the reading path is exercised for real.
"""

from benchopt import BaseDataset


class Dataset(BaseDataset):
    name = "bp5_file"
    parameters = {"path": [""], "variable": ["V"], "max_frames": [8]}
    test_parameters = {"path": [""], "variable": ["V"]}

    def get_data(self):
        import numpy as np

        from stagelearn.staging.adios import bindings

        b = bindings()
        path = self.path or _sample_file()
        adios = b.ADIOS()
        io = adios.DeclareIO("bench")
        io.SetEngine("BP5")
        engine = io.Open(path, b.Mode.ReadRandomAccess)
        var = io.InquireVariable(self.variable)
        if var is None:
            raise ValueError(f"{path}: no variable {self.variable!r} (has {sorted(io.AvailableVariables())})")
        shape = [int(x) for x in var.Shape()]
        n = min(int(var.Steps()), self.max_frames)
        frames = []
        for t in range(n):
            var.SetStepSelection([t, 1])
            var.SetSelection([[0] * len(shape), shape])
            out = np.empty(shape, dtype=np.float32 if var.Type() == "float" else np.float64)
            engine.Get(var, out, b.Mode.Sync)
            frames.append(out.astype(np.float32))
        blocks = [([int(x) for x in bi["Start"].split(",")], [int(x) for x in bi["Count"].split(",")])
                  for bi in engine.BlocksInfo(self.variable, 0)] or [([0] * len(shape), shape)]
        engine.Close()
        return dict(frames=np.stack(frames), blocks=blocks, name=f"{path}:{self.variable}")


def _sample_file():
    """Write a small BP5 file (two blocks per step, like two writer ranks) and return its path."""
    import os
    import tempfile

    import numpy as np
    from mpi4py import MPI

    from stagelearn.sim_mocks import GrayScott3D
    from stagelearn.staging.adios import bindings

    b = bindings()
    path = os.path.join(tempfile.mkdtemp(prefix="stagelearn-bench-"), "sample.bp")
    gs = GrayScott3D(16, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=MPI.COMM_SELF)
    adios = b.ADIOS()
    io = adios.DeclareIO("sample")
    io.SetEngine("BP5")
    v = io.DefineVariable("V", np.zeros((8, 16, 16)), [16, 16, 16], [0, 0, 0], [8, 16, 16])
    engine = io.Open(path, b.Mode.Write)
    for _ in range(3):
        gs.advance(50)
        field = np.ascontiguousarray(gs.fields()["V"])
        engine.BeginStep()
        for start in (0, 8):
            v.SetSelection([[start, 0, 0], [8, 16, 16]])
            engine.Put(v, np.ascontiguousarray(field[start:start + 8]), b.Mode.Sync)
        engine.EndStep()
    engine.Close()
    return path
