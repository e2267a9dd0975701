"""Staging ingest: stagelearn's stream reader vs a bare ADIOS2 SST reader moving the same bytes.

    python benchmarks/perf_ingest.py

A 2-rank SST writer (plain adios2, the producer's raw layout: global float32 arrays U, V of
64^3 plus their per-block reports) sends 60 steps; one reader rank takes all blocks, with a bare
BeginStep/Get/EndStep loop or with stagelearn's SharedStreamReader, timed from after Open to the
end of the stream; the two alternate twice and the best of each counts. The writer may limit the
rate, so this bounds the reader's overhead rather than measuring its peak. Goal (issue 3): at
most 10% overhead.
"""

import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
STEPS, L = 60, 64


def writer(path, xml):
    import numpy as np
    from mpi4py import MPI

    from stagelearn.staging.adios import make_adios
    from stagelearn.staging.wire import REPORT_FIELDS, make_report

    comm = MPI.COMM_WORLD
    import adios2.bindings as b

    ad = make_adios(xml, comm)
    io = ad.DeclareIO("SimulationOutput")
    half = L // comm.size
    start = [comm.rank * half, 0, 0]
    count = [half, L, L]
    data = {v: np.random.default_rng(comm.rank).random(count, dtype=np.float32) for v in ("U", "V")}
    var = {v: io.DefineVariable(v, data[v], [L, L, L], start, count) for v in data}
    rep = {v: io.DefineVariable(f"{v}/report", np.zeros(len(REPORT_FIELDS)), [], [], [len(REPORT_FIELDS)]) for v in data}
    eng = io.Open(path, b.Mode.Write)
    for s in range(STEPS):
        eng.BeginStep()
        for v in data:
            eng.Put(var[v], data[v], b.Mode.Sync)
            eng.Put(rep[v], make_report(step=s, rank=comm.rank, raw_bytes=data[v].nbytes), b.Mode.Sync)
        eng.EndStep()
    eng.Close()


def bare_reader(path, xml):
    import numpy as np
    from mpi4py import MPI

    from stagelearn.staging.adios import make_adios
    import adios2.bindings as b

    ad = make_adios(xml, MPI.COMM_WORLD)
    io = ad.DeclareIO("SimulationOutput")
    eng = io.Open(path, b.Mode.Read)
    t0, nbytes = time.perf_counter(), 0  # both readers: from after Open to the end of the stream
    while eng.BeginStep(b.StepMode.Read, 60.0) == b.StepStatus.OK:
        step = eng.CurrentStep()
        keep = []  # deferred Gets write into these at EndStep: keep them alive
        for v in ("U", "V"):
            var = io.InquireVariable(v)
            for bi in eng.BlocksInfo(v, step):
                out = np.empty([int(c) for c in bi["Count"].split(",")], dtype=np.float32)
                var.SetSelection([[int(c) for c in bi["Start"].split(",")], list(out.shape)])
                eng.Get(var, out, b.Mode.Deferred)
                keep.append(out)
                nbytes += out.nbytes
        eng.EndStep()
    eng.Close()
    return time.perf_counter() - t0, nbytes


def staging_reader(path, xml):
    from mpi4py import MPI

    from stagelearn.staging.stream import SharedStreamReader
    from stagelearn.staging.xmlconfig import read_ios

    r = SharedStreamReader(xml, "SimulationOutput", path, MPI.COMM_WORLD, read_ios(xml), open_timeout_s=60, step_timeout_s=60)
    t0, nbytes = time.perf_counter(), 0
    while True:
        blocks = r.read_step()
        if blocks is None:
            break
        nbytes += sum(b.raw.nbytes for b in blocks)
    r.close()
    return time.perf_counter() - t0, nbytes


def main():
    xml = os.path.join(os.path.dirname(os.path.dirname(HERE)), "xml_configs", "stagelearn.xml")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, kind in enumerate(("bare", "staging", "bare", "staging")):  # alternate, keep the best of two
            path = os.path.join(tmp, f"s_{kind}{i}")
            w = subprocess.Popen([mpiexec, "-n", "2", sys.executable, HERE, "writer", path, xml])
            r = subprocess.run([mpiexec, "-n", "1", sys.executable, HERE, kind, path, xml], capture_output=True, text=True,
                               timeout=600)
            w.wait(timeout=120)
            if r.returncode:
                sys.exit(f"{kind} reader failed:\n{r.stderr[-2000:]}")
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")][-1].split()
            t, n = float(line[1]), int(line[2])
            results[kind] = min(results.get(kind, (t, n)), (t, n))
    (tb, nb), (ts, ns) = results["bare"], results["staging"]
    assert nb == ns, (nb, ns)
    print(f"bytes moved per run: {nb / 1e6:.1f} MB in {STEPS} steps (2 writers -> 1 reader)")
    print(f"bare_reader_MBps: {nb / 1e6 / tb:.1f}")
    print(f"staging_reader_MBps: {ns / 1e6 / ts:.1f}")
    print(f"staging_overhead: {ts / tb - 1:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        kind, path, xml = sys.argv[1:4]
        if kind == "writer":
            writer(path, xml)
        else:
            t, n = (bare_reader if kind == "bare" else staging_reader)(path, xml)
            print("RESULT", t, n, flush=True)
    else:
        main()
