"""Staging writes compressed.bp collectively: 3 staging ranks each put their own blocks (mpiexec)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import REPO
from stagelearn.staging.adios import bindings, built_with_mpi
from stagelearn.staging.output import CompressedOutputReader
from stagelearn.staging.wire import report_get
from test_output import SHAPE, check_file, field

N_STAGING, N_PRODUCERS, STEPS = 3, 5, [0, 1, 2]

WRITE = f"""
import json, sys
sys.path.insert(0, {os.path.join(str(REPO), "tests")!r})
from mpi4py import MPI
from test_output import producer_block, small_encoder
from stagelearn.staging.output import CompressedOutputWriter

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
mine = [p for p in range({N_PRODUCERS}) if p % size == rank]   # interleaved: file order != producer order
writer = CompressedOutputWriter({os.path.join(str(REPO), "xml_configs", "stagelearn.xml")!r}, "CompressedOutput",
                                "compressed.bp", comm)
for step in {STEPS}:
    blocks = [producer_block(step, p, {N_PRODUCERS}, coded=step > 0) for p in mine]
    writer.write_step(step, blocks, encoder=small_encoder() if step == 1 else None, summary={{"blocks": [step]}})
writer.close()
with open(f"rank{{rank}}.json", "w") as f:
    json.dump({{"collective": writer.collective, "gather": writer.gather, "bytes_put": writer.bytes_put,
               "bytes_gathered": writer.bytes_gathered, "producers": mine}}, f)
"""


def writer_ids(path):
    """Per step: ``[(WriterID, producer rank, bytes of payload+anomaly+report)]`` of every block, and
    the WriterIDs of ``step`` (from the BP5 metadata, read with plain ADIOS2 calls)."""
    b = bindings()
    adios = b.ADIOS()  # must outlive its IO
    io = adios.DeclareIO("check")
    io.SetEngine("BP5")
    eng = io.Open(str(path), b.Mode.ReadRandomAccess)
    rv, pv = io.InquireVariable("U/report"), io.InquireVariable("U/payload")
    out = []
    for t in range(len(STEPS)):
        blocks = []
        # (BlocksInfo of a uint8 variable fails in the Python bindings: it decodes Min/Max as text)
        infos = {n: eng.BlocksInfo(n, t) for n in ("U/anomaly", "U/report")}
        for i, bi in enumerate(infos["U/report"]):
            row = np.empty(int(bi["Count"]))
            rv.SetStepSelection([t, 1])
            rv.SetBlockSelection(i)
            eng.Get(rv, row, b.Mode.Sync)
            assert int(infos["U/anomaly"][i]["WriterID"]) == int(bi["WriterID"])  # block i together
            pv.SetStepSelection([t, 1])
            pv.SetBlockSelection(i)
            nbytes = int(pv.SelectionSize()) + 4 * int(infos["U/anomaly"][i]["Count"]) + 8 * row.size
            blocks.append((int(bi["WriterID"]), int(report_get(row, "rank")), nbytes))
        out.append((blocks, [int(bi["WriterID"]) for bi in eng.BlocksInfo("step", t)]))
    eng.Close()
    return out


@pytest.mark.mpi
@pytest.mark.skipif(not built_with_mpi(), reason="collective output needs ADIOS2 built with MPI")
def test_each_staging_rank_writes_its_own_blocks(tmp_path, mpirun, stagelearn_cli):
    mpirun(N_STAGING, WRITE, timeout=180)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(N_STAGING)]
    assert all(r["collective"] and not r["gather"] for r in ranks)
    assert [r["bytes_gathered"] for r in ranks] == [0] * N_STAGING  # no block crossed to rank 0
    assert all(r["bytes_put"] > 0 for r in ranks)

    path = tmp_path / "compressed.bp"
    put_in_file = [0] * N_STAGING
    for blocks, step_writers in writer_ids(path):
        assert step_writers == [0]  # per-step items from rank 0 only
        assert sorted(p for _, p, _ in blocks) == list(range(N_PRODUCERS))
        for writer, producer, nbytes in blocks:
            assert writer == producer % N_STAGING  # the staging rank that held the block wrote it
            put_in_file[writer] += nbytes
    assert put_in_file == [r["bytes_put"] for r in ranks]  # each rank's bytes are its own blocks

    check_file(str(path), STEPS, N_PRODUCERS)  # decodes exactly, block order != producer order
    reader = CompressedOutputReader(str(path))
    assert reader.encoder(3).version == 3 and {k: list(v) for k, v in reader.summary("blocks").items()} == {s: [s] for s in STEPS}
    reader.close()
    listing = stagelearn_cli("decode", path)
    assert listing.returncode == 0, listing.stderr
    assert "variables ['U'], steps 0..2 (3)" in listing.stdout
    for step in STEPS:
        proc = stagelearn_cli("decode", path, "--step", step, "--var", "U", "-o", f"u{step}.npy")
        assert proc.returncode == 0, proc.stderr
        decoded = np.load(tmp_path / f"u{step}.npy")
        assert decoded.shape == SHAPE
        np.testing.assert_array_equal(decoded, field(step))
