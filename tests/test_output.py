"""The compressed output file without mpiexec: blocks, bundles, serial and gathered writing, reading back."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from fakes import run_ranks
from stagelearn.analytics import IncrementalPCA
from stagelearn.analytics.anomaly import HIST_EDGES
from stagelearn.analytics.encoder import Encoder
from stagelearn.analytics.payload import encode_raw_block, pack_payload
from stagelearn.analytics.tiling import to_tiles
from stagelearn.staging import block as block_module
from stagelearn.staging.block import ReceivedBlock, pack_blocks, unpack_blocks
from stagelearn.staging.output import CompressedOutputReader, CompressedOutputWriter
from stagelearn.staging.wire import make_report, report_get

SHAPE = (12, 8)


def field(step):
    """A global field known at every step (exact float32 values)."""
    i, j = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    return (np.sin(0.3 * i + 0.1 * step) * np.cos(0.2 * j)).astype(np.float32)


def producer_block(step, rank, n_producers, *, coded):
    """Producer ``rank``'s row block of ``field(step)``: raw, or a lossless raw payload (``coded``)."""
    rows = np.array_split(np.arange(SHAPE[0]), n_producers)[rank]
    start, count = (int(rows[0]), 0), (len(rows), SHAPE[1])
    data = field(step)[rows[0]:rows[-1] + 1].copy()
    report = make_report(step=step, rank=rank, raw_bytes=data.nbytes, n=data.size)
    if not coded:
        return ReceivedBlock(var="U", rank=rank, report=report, raw=data, shape=SHAPE, start=start, count=count)
    payload = encode_raw_block(data, header={"step": step, "variable": "U", "rank": rank, "shape": list(SHAPE),
                                             "start": list(start), "count": list(count),
                                             "block_shape": list(count), "tile_shape": [2, 4]})
    return ReceivedBlock(var="U", rank=rank, report=report, payload=payload,
                         anomaly=np.array([[1.0, 9.5, 1.0, 0.0]]))


def test_payload_is_parsed_once_and_err_hist_derived(monkeypatch):
    counts = np.arange(HIST_EDGES.size - 1, dtype=np.uint32)
    payload = pack_payload({"kind": "raw"}, {"err_hist": zstandard.ZstdCompressor().compress(counts.tobytes())})
    calls = []
    real = block_module.parse_payload
    monkeypatch.setattr(block_module, "parse_payload", lambda p: calls.append(1) or real(p))
    blk = ReceivedBlock(var="U", rank=0, report=make_report(step=3), payload=payload, anomaly=np.zeros((0, 4)))
    header, sections = blk.parsed
    assert header["kind"] == "raw" and "err_hist" in sections
    np.testing.assert_array_equal(blk.err_hist, counts.astype(np.float64))
    assert blk.parsed[0] is header and len(calls) == 1  # parsed once for both
    assert blk.step == 3
    blk.payload = encode_raw_block(np.zeros(4, np.float32))  # a new payload (in-transit coding) is parsed anew
    assert "err_hist" not in blk.parsed[1] and blk.err_hist is None and len(calls) == 2
    raw = ReceivedBlock(var="U", rank=0, report=make_report(), raw=np.zeros(3, np.float32))
    assert raw.parsed is None and raw.err_hist is None and raw.nbytes == 12


def test_block_bundle_round_trip():
    blocks = [producer_block(4, 0, 2, coded=False), producer_block(4, 1, 2, coded=True)]
    back = unpack_blocks(pack_blocks(blocks))
    assert [(b.var, b.rank, b.step) for b in back] == [("U", 0, 4), ("U", 1, 4)]
    np.testing.assert_array_equal(back[0].raw, blocks[0].raw)
    assert back[0].raw.flags.writeable and back[0].shape == SHAPE and back[0].count == blocks[0].count
    assert back[1].payload == blocks[1].payload and back[1].raw is None
    np.testing.assert_array_equal(back[1].anomaly, blocks[1].anomaly)
    np.testing.assert_array_equal(back[1].report, blocks[1].report)
    with pytest.raises(ValueError):
        unpack_blocks(b"XXXX" + b"\0" * 8)


def check_file(path, steps, n_producers):
    """Every step of the file decodes to the field written, and block i maps to its producer by report."""
    reader = CompressedOutputReader(path)
    try:
        assert reader.steps == steps and reader.fields() == ["U"]
        for step in steps:
            np.testing.assert_array_equal(reader.read(step, "U"), field(step))
            ranks = sorted(int(report_get(r, "rank")) for r in reader.reports(step, "U"))
            assert ranks == list(range(n_producers))
    finally:
        reader.close()


def small_encoder(version=3):
    tiles = to_tiles(np.concatenate([field(s) for s in range(4)]), (4, 4))
    return Encoder.from_learners({"U": IncrementalPCA(4).partial_fit(tiles)}, version=version, trained_until_step=4,
                                 tile_shapes={"U": (4, 4)}, ranges={"U": (-1.0, 1.0)}, psnr_db=40.0, raw_fraction=0.02)


def test_serial_writer_round_trip_with_encoder_and_summary(tmp_path):
    path = str(tmp_path / "serial.bp")
    enc = small_encoder()
    writer = CompressedOutputWriter(None, None, path)
    assert not writer.collective and not writer.gather
    for step in (0, 5, 10):
        blocks = [producer_block(step, r, 3, coded=step > 0) for r in (2, 0, 1)]
        writer.write_step(step, blocks, encoder=enc if step == 5 else None,
                          summary={"n_blocks": [len(blocks)]} if step != 0 else None)
    writer.close()
    check_file(path, [0, 5, 10], 3)
    reader = CompressedOutputReader(path)
    np.testing.assert_array_equal(reader.encoder(3).variables["U"].components_, enc.variables["U"].components_)
    assert {k: list(v) for k, v in reader.summary("n_blocks").items()} == {5: [3], 10: [3]}
    assert reader.summary("other") == {}
    amap = reader.anomaly_map(5, "U")  # tile 1 (2x4 tiles) of each block: its rows 0-1, columns 4-7
    assert amap.shape == (3, 2 + 2 + 2) and set(amap[:, -1]) == {1.0} and set(amap[:, 3]) == {4.0}
    assert sorted(amap[:, 2]) == [0.0, 4.0, 8.0]  # the first row of each producer's block
    reader.close()


def test_gather_fallback_writes_every_rank_blocks_on_rank_0(tmp_path):
    """Serial-ADIOS2 fallback (forced): ranks send their blocks to rank 0, which writes them alone."""
    path = str(tmp_path / "gathered.bp")
    n_producers = 5

    def rank_main(comm):
        mine = [p for p in range(n_producers) if p % comm.Get_size() == comm.Get_rank()]
        writer = CompressedOutputWriter(None, None, path, comm, gather=True)
        assert writer.gather and not writer.collective and (writer.engine is None) == (comm.Get_rank() != 0)
        for step in (1, 2):
            writer.write_step(step, [producer_block(step, p, n_producers, coded=step == 2) for p in mine])
        writer.close()
        return writer.bytes_put, writer.bytes_gathered

    counts = run_ranks(3, rank_main)
    assert counts[1] == (0, 0) and counts[2] == (0, 0)  # only rank 0 puts
    assert counts[0][0] > 0 and counts[0][1] > 0
    check_file(path, [1, 2], n_producers)


def test_code_attributes_are_stored_under_code_and_read_back(tmp_path):
    """The code's stream attributes (in transit) go to ``code/<name>``, new or changed ones at any step,
    with their types; stagelearn's own attribute stays apart; the decode listing prints them."""
    from stagelearn.staging.decode_listing import describe_output
    from stagelearn.staging.step_facts import StepItems

    path = str(tmp_path / "attrs.bp")
    first = {"title": "run 7", "authors": ["a", "b c"], "dt": np.float64(0.125), "nx": np.int64(64),
             "origin": np.array([0.5, -1.25]), "dims": np.array([64, 32], dtype=np.int32), "T/unit": "K",
             "T/range": np.array([0.0, 1.5], dtype=np.float32), "stagelearn/report_fields": "the code's own"}
    later = dict(first, **{"restarts": np.array([3], dtype=np.int64), "T/unit": "degC"})
    writer = CompressedOutputWriter(None, None, path)
    for step in (0, 1, 2):
        items = StepItems(n_blocks=[3])
        items.attributes = first if step < 2 else later  # a new attribute and a changed one at step 2
        writer.write_step(step, [producer_block(step, r, 3, coded=False) for r in range(3)], summary=items)
    writer.close()
    reader = CompressedOutputReader(path)
    got = reader.attributes()
    assert sorted(got) == sorted(later)
    for name, want in later.items():
        if isinstance(want, (str, list)):
            assert got[name] == want, name
        else:
            assert np.asarray(got[name]).dtype == np.asarray(want).dtype, name
            np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert np.ndim(got["dt"]) == 0 and np.ndim(got["nx"]) == 0  # single values stay single
    assert reader.io.InquireAttribute("stagelearn/report_fields").DataString()[0] == "step"  # ours, untouched
    check_file(path, [0, 1, 2], 3)
    text = describe_output(path, reader)
    reader.close()
    assert 'T/unit = "degC"' in text and "dims = [64, 32] (int32)" in text and 'authors = ["a", "b c"]' in text


def test_a_file_without_code_attributes_lists_none(tmp_path):
    path = str(tmp_path / "plain.bp")
    writer = CompressedOutputWriter(None, None, path)
    writer.write_step(0, [producer_block(0, 0, 1, coded=False)])
    writer.close()
    reader = CompressedOutputReader(path)
    assert reader.attributes() == {}
    reader.close()
