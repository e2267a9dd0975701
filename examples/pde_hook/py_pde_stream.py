"""A py-pde simulation streaming its field through stagelearn: the hook is ``StagelearnTracker``.

py-pde (https://github.com/zwicker-group/py-pde, ``pip install py-pde``) calls its *trackers* at
the interrupts they ask for; ``StagelearnTracker`` writes the state through a
:class:`stagelearn.staging.Producer` at each of them. The producer sends raw float32 blocks over
SST until staging pushes an encoder back, then per-tile codes (``write`` polls for encoders
itself, never blocking). Everything below the tracker is the example around it: an Allen-Cahn
phase separation from random noise, and the files ``stagelearn report`` reads.

Run (both from the same directory; see README.md next to this file)::

    stagelearn stage examples/pde_hook/run.yaml --run-dir results/pde_hook &
    python examples/pde_hook/py_pde_stream.py --run-dir results/pde_hook
    wait; stagelearn report examples/pde_hook/run.yaml --run-dir results/pde_hook
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pde
from mpi4py import MPI
from pde.trackers.base import TrackerBase

from stagelearn.staging import Producer


# --- the hook -----------------------------------------------------------------------------------
class StagelearnTracker(TrackerBase):
    """Write the state through a stagelearn ``Producer`` at every interrupt (encoders come back by themselves)."""

    def __init__(self, producer, name="c", interrupts=1):
        super().__init__(interrupts=interrupts)
        self.producer, self.name, self.step = producer, name, 0

    def initialize(self, field, info=None):
        if not self.producer.is_open:  # first solve: declare the field, wait (bounded) for staging
            self.producer.define_variable(self.name, field.data.shape, [0] * field.data.ndim, field.data.shape)
            self.producer.open()
        return super().initialize(field, info)

    def handle(self, field, t):
        self.producer.write(self.step, {self.name: field.data})
        self.step += 1
# --- end of the hook ------------------------------------------------------------------------------


class _TimedProducer(Producer):
    """Producer that also keeps the time in ``write`` and the last step written (for `stagelearn report`;
    the hook works with a plain ``Producer``)."""

    io_s, last = 0.0, {}

    def write(self, step, fields):
        t0 = time.perf_counter()
        reports = super().write(step, fields)
        self.io_s += time.perf_counter() - t0
        self.last = {name: np.array(block, dtype=np.float32) for name, block in fields.items()}
        return reports


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default="results/pde_hook",
                   help="the staging side's --run-dir: the stream is <run-dir>/sst/stream (default: %(default)s)")
    p.add_argument("--config-file", default=None,
                   help="ADIOS2 XML with the IOs SimulationOutput and ModelUpdates (default: stagelearn's packaged "
                        "stagelearn.xml, which is also the run YAML's default)")
    p.add_argument("--grid", type=int, default=128, help="cells per side (default: %(default)s)")
    p.add_argument("--t-end", type=float, default=40.0, help="simulated time (default: %(default)s)")
    p.add_argument("--outputs", type=int, default=50, help="output steps after the initial state (default: %(default)s)")
    p.add_argument("--dt", type=float, default=0.02, help="time step (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="numpy", choices=["numpy", "numba"],
                   help="py-pde backend; numba runs faster but compiles for ~30 s first (default: %(default)s)")
    p.add_argument("--open-timeout", type=float, default=60.0, help="seconds to wait for staging (timeouts.open_s)")
    p.add_argument("--step-timeout", type=float, default=120.0, help="seconds per step (timeouts.step_s)")
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.config_file is None:
        from stagelearn.staging.config import default_xml

        args.config_file = default_xml()
    comm = MPI.COMM_WORLD
    if comm.Get_size() != 1:
        raise SystemExit("this example runs py-pde on one rank (mpiexec -n 1, or plain python)")
    t0 = time.time()
    os.makedirs(os.path.join(args.run_dir, "sst"), mode=0o700, exist_ok=True)

    # the simulation: Allen-Cahn phase separation, dc/dt = laplace(c) - c^3 + c, from random noise
    n = args.grid
    grid = pde.CartesianGrid([[0, n / 2], [0, n / 2]], [n, n], periodic=True)
    state = pde.ScalarField.random_uniform(grid, -0.1, 0.1, rng=np.random.default_rng(args.seed))
    eq = pde.AllenCahnPDE()

    producer = _TimedProducer(os.path.join(args.run_dir, "sst", "stream"), comm=comm, config_file=args.config_file,
                              open_timeout_s=args.open_timeout, step_timeout_s=args.step_timeout)
    with producer:
        tracker = StagelearnTracker(producer, name="c", interrupts=args.t_end / args.outputs)
        t_solve = time.perf_counter()
        eq.solve(state, t_range=args.t_end, dt=args.dt, solver="euler", backend=args.backend,
                         tracker=[tracker])
        solve_s = time.perf_counter() - t_solve
        version = producer.encoder.version if producer.encoder else 0
    # what `stagelearn report` reads besides the staging side's files (the same fields as `stagelearn sim`)
    last = tracker.step - 1
    np.save(os.path.join(args.run_dir, f"reference_c_step{last}.npy"), producer.last["c"])
    record = {"steps_written": producer.steps_written, "compute_s": solve_s - producer.io_s, "io_s": producer.io_s,
              "ranks": comm.Get_size(), "layout": producer.layout, "engine": producer.engine_type,
              "last_encoder_version": version, "reference": {"variable": "c", "step": last},
              "simulation": f"py-pde {pde.__version__} AllenCahnPDE {n}x{n}", "wall_s": time.time() - t0}
    with open(os.path.join(args.run_dir, "producer.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"py-pde wrote {producer.steps_written} steps; last encoder version {version}; "
          f"compute {record['compute_s']:.1f} s, write {producer.io_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
