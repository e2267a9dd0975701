"""Scaling: bytes on the wire per step and wall time versus producer and staging rank counts.

    python benchmarks/perf_scaling.py            # both parts
    python benchmarks/perf_scaling.py --inbound  # staging rank 0's inbound bytes only (seconds)

Gray-Scott 48^3, 600 time steps (61 output steps), producers M in {1, 2, 4, 8} with N = 2 staging
ranks, then N in {1, 2, 4} with M = 4 (all oversubscribed on this machine). Bytes per step are
taken after the first encoder (what the steady state costs); wall is the whole run.

Inbound bytes of staging rank 0 per output step, M = 8 producers, N = 4 staging ranks: the
compressed output written the old way (every rank's blocks gathered on rank 0, which writes alone)
and collectively (each rank puts its own blocks into the one BP5 file). Measured with
:class:`~stagelearn.staging.output_writer.CompressedOutputWriter` over ``mpiexec -n 4`` on synthetic
coded blocks: the bytes rank 0 receives from the other ranks through the writer (MPI gather), and,
collectively, the BP5 metadata (``md.*``, gathered by ADIOS2 on rank 0). Collective runs use
``AggregationType=EveryoneWrites`` with ``NumAggregators = N`` so each rank writes its own data to its
own subfile (``data.<rank>``), no data passing through another rank;
ADIOS2's default aggregation (``TwoLevelShm``) instead funnels each node's data to one aggregator
per node, so rank 0 then receives its own node's blocks only (through shared memory).
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp, m, n):
    from benchmark_utils import read_json, run_stagelearn

    run_dir = run_stagelearn(tmp, f"m{m}n{n}", {
        "simulation": {"type": "gray_scott", "ranks": m, "L": 48, "steps": 600, "plotgap": 10},
        "staging": {"ranks": n}, "adios2": {"config_file": os.path.join(REPO, "xml_configs", "stagelearn.xml")},
        "learner": {"warmup_steps": 5, "publish_every": 20}, "codec": {"psnr_db": 41}, "metrics": {"sz3_every": 0}})
    s = read_json(run_dir, "summary.json")
    steps = [r for r in read_json(run_dir, "steps.json") if r["encoder_version"] > 0]
    return sum(r["sent_bytes"] for r in steps) / len(steps), s["wall_s"], s["compression_ratio"]


INBOUND_XML = """<?xml version="1.0"?>
<adios-config>
  <io name="CompressedOutput">
    <engine type="BP5">
      <parameter key="AggregationType" value="EveryoneWrites"/>
      <parameter key="NumAggregators" value="{n}"/>
    </engine>
  </io>
</adios-config>
"""

INBOUND_SCRIPT = """
import json, sys
import numpy as np
from mpi4py import MPI
from stagelearn.analytics.payload import encode_raw_block
from stagelearn.staging.block import ReceivedBlock
from stagelearn.staging.output import CompressedOutputWriter
from stagelearn.staging.wire import assign_blocks, make_report

xml, path, mode, m, steps, edge = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
comm = MPI.COMM_WORLD
rng = np.random.default_rng(comm.Get_rank())
writer = CompressedOutputWriter(xml, "CompressedOutput", path, comm, gather=mode == "gather")
for step in range(steps):
    blocks = []
    for p in assign_blocks(m, comm.Get_size(), comm.Get_rank()):
        # a coded-size payload: a lossless payload of a coarsely quantised block (~10x smaller than raw)
        block = np.round(np.cumsum(rng.normal(size=(edge,) * 3), axis=0), 0).astype(np.float32)
        payload = encode_raw_block(block, header={"step": step, "rank": p})
        blocks.append(ReceivedBlock(var="U", rank=p, report=make_report(step=step, rank=p), payload=payload))
    writer.write_step(step, blocks)
writer.close()
counts = comm.gather([writer.bytes_put, writer.bytes_gathered])
if comm.Get_rank() == 0:
    print(json.dumps(counts))
"""


def inbound(m=8, n=4, steps=5, edge=48):
    """Staging rank 0's inbound bytes per step, gathered vs collective output.

    Returns
    -------
    result : dict
        ``gather`` and ``collective``: bytes rank 0 received from other ranks through the writer
        per step; ``metadata``: BP5 metadata bytes per step (collective, gathered by ADIOS2 on rank
        0); ``subfiles``: bytes per data subfile of the collective file; ``put``: bytes each rank put.
    """
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "out.xml")
        with open(xml, "w") as f:
            f.write(INBOUND_XML.format(n=n))
        script = os.path.join(tmp, "write.py")
        with open(script, "w") as f:
            f.write(INBOUND_SCRIPT)
        for mode in ("gather", "collective"):
            path = os.path.join(tmp, f"{mode}.bp")
            proc = subprocess.run([mpiexec, "-n", str(n), sys.executable, script, xml, path, mode, str(m), str(steps),
                                   str(edge)], capture_output=True, text=True, timeout=600)
            if proc.returncode:
                sys.exit(f"inbound {mode}: mpiexec failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            counts = json.loads(proc.stdout.strip().splitlines()[-1])
            out[mode] = counts[0][1] / steps
            out.setdefault("put", {})[mode] = [c[0] // steps for c in counts]
            if mode == "collective":
                out["metadata"] = sum(os.path.getsize(p) for p in glob.glob(os.path.join(path, "md.*"))) / steps
                out["subfiles"] = {os.path.basename(p): os.path.getsize(p)
                                   for p in sorted(glob.glob(os.path.join(path, "data.*")))}
    return out


def print_inbound(m=8, n=4):
    r = inbound(m, n)
    print(f"| staging rank 0 inbound bytes/step, M = {m}, N = {n} | gather on rank 0 (before) | collective (after) |")
    print("|---|---|---|")
    print(f"| blocks from other ranks (MPI, through the writer) | {r['gather']:,.0f} | {r['collective']:,.0f} |")
    print(f"| BP5 metadata gathered by ADIOS2 (collective) | - | {r['metadata']:,.0f} |")
    print(f"bytes put per rank per step: gather {r['put']['gather']}, collective {r['put']['collective']}; "
          f"collective subfiles {r['subfiles']}")
    print(f"rank0_inbound_bytes_per_step_M{m}_N{n}: before {r['gather']:.0f} after {r['collective'] + r['metadata']:.0f}")


def main():
    print_inbound()
    print()
    print("| producers M | staging N | bytes/step (coded) | ratio | wall s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for m, n in [(1, 2), (2, 2), (4, 2), (8, 2), (4, 1), (4, 4)]:
            b, wall, ratio = run(tmp, m, n)
            print(f"| {m} | {n} | {b:,.0f} | {ratio:.2f} | {wall:.1f} |")
            print(f"bytes_per_step_M{m}_N{n}: {b:.0f}")
            print(f"wall_s_M{m}_N{n}: {wall:.1f}")


if __name__ == "__main__":
    if "--inbound" in sys.argv[1:]:
        print_inbound()
    else:
        main()
