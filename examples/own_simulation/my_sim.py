"""A small 2-D simulation on 2 MPI ranks that streams its field to stagelearn staging.

Run from this folder (staging first or second, either order works)::

    mpiexec -n 1 stagelearn stage my_run.yaml --run-dir run &
    mpiexec -n 2 python my_sim.py --run-dir run
    wait

Each rank owns half of a 128 x 128 grid (split along the first axis) and writes its block
through :class:`stagelearn.staging.Producer`. Until staging pushes an encoder back the blocks
travel raw; afterwards they travel as compressed codes. Nothing else in the script changes.
"""
import argparse
import os

import numpy as np
from mpi4py import MPI

from stagelearn.staging import Producer
from stagelearn.staging.config import default_xml  # the packaged ADIOS2 XML (SST streams)

N = 128  # global grid N x N


def field(t, y, x):
    """The 'simulation': two Gaussian bumps drifting across a wavy background at time ``t``."""
    out = 0.3 * np.sin(2 * np.pi * (x + 0.05 * t)) * np.cos(2 * np.pi * y)
    for cx, cy, v in ((0.3, 0.4, 0.01), (0.7, 0.6, -0.008)):
        dx = (x - cx - v * t + 0.5) % 1.0 - 0.5      # periodic in x
        out += np.exp(-(dx ** 2 + (y - cy) ** 2) / 0.01)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="run", help="the directory given to `stagelearn stage --run-dir`")
    parser.add_argument("--steps", type=int, default=30, help="output steps to write")
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rows = N // size                                   # this rank's slab: rows [start, start + rows)
    start = rank * rows
    count = rows if rank < size - 1 else N - start
    y, x = np.meshgrid((start + np.arange(count)) / N, np.arange(N) / N, indexing="ij")

    with Producer(os.path.join(args.run_dir, "sst", "stream"), comm=comm, config_file=default_xml(),
                  open_timeout_s=60, step_timeout_s=60) as prod:
        prod.define_variable("T", shape=(N, N), start=(start, 0), count=(count, N))
        prod.open()                                   # waits (bounded) for staging to connect
        for step in range(args.steps):
            block = field(float(step), y, x)          # your solver advances here
            prod.write(step, {"T": block})            # collective: raw until an encoder arrives, then codes
        version = prod.encoder.version if prod.encoder else 0
        written = prod.steps_written
    if rank == 0:
        print(f"my_sim wrote {written} steps on {size} ranks; last encoder version {version}")


if __name__ == "__main__":
    main()
