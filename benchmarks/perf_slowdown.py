"""Simulation slowdown: Gray-Scott alone vs coupled (raw streaming, then encoding), same run size.

    python benchmarks/perf_slowdown.py

4 producer ranks, 64^3, 1000 time steps, output every 10; staging on 2 ranks. "alone" times the
solver loop with no output; "raw" streams raw blocks all run long (no encoder is ever published);
"encoded" is the demo configuration. Slowdown = simulation loop time (compute + write) / alone.
On this 2-core machine the staging job competes with the simulation for the same cores, which
inflates both coupled figures. Goal (issue 3): at most 1.10x with encoding.
"""

import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(HERE))
SIM = {"type": "gray_scott", "ranks": 4, "L": 64, "steps": 1000, "plotgap": 10}


def alone():
    from mpi4py import MPI

    from stagelearn.sim_mocks import GrayScott3D

    comm = MPI.COMM_WORLD
    gs = GrayScott3D(SIM["L"], F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=comm)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(SIM["steps"] // SIM["plotgap"]):
        gs.advance(SIM["plotgap"])
        _ = {k: v.copy() for k, v in gs.fields().items()}  # what an output step touches without I/O
    t = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
    if comm.rank == 0:
        print("RESULT", t)


def coupled(tmp, name, learner):
    from benchmark_utils import read_json, run_stagelearn

    run_dir = run_stagelearn(tmp, name, {
        "simulation": SIM, "staging": {"ranks": 2}, "adios2": {"config_file": os.path.join(REPO, "xml_configs", "stagelearn.xml")},
        "learner": learner, "codec": {"psnr_db": 41}, "metrics": {"sz3_every": 0}})
    p = read_json(run_dir, "producer.json")
    return p["compute_s"] + p["io_s"]


def main():
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([mpiexec, "-n", str(SIM["ranks"]), sys.executable, HERE, "alone"], capture_output=True, text=True,
                         timeout=900, env=env)
    t_alone = float([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")][-1].split()[1])
    with tempfile.TemporaryDirectory() as tmp:
        t_raw = coupled(tmp, "raw", {"warmup_steps": 10_000})
        t_enc = coupled(tmp, "encoded", {"warmup_steps": 5, "publish_every": 40})
    print(f"simulation_alone_s: {t_alone:.2f}")
    print(f"simulation_raw_streaming_s: {t_raw:.2f}")
    print(f"simulation_encoding_s: {t_enc:.2f}")
    print(f"slowdown_raw: {t_raw / t_alone:.2f}")
    print(f"slowdown_encoding: {t_enc / t_alone:.2f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["alone"]:
        alone()
    else:
        main()
