"""Issue 15: an existing code's data and its ADIOS2 XML are the contract; nothing is altered or
lost while a report says all is well.

- Integers the wire's float32 cannot hold are never reported exact: the report rows compute the
  error of what travels against the caller's values in their own dtype, and a warning names the
  variable and the largest value that is not exact (item 2, in situ).
- In transit, ``validate`` and ``run`` judge the code's own XML (as ``xml RUN.yaml --check``) and
  refuse what loses steps or cannot work here, naming the file, IO, parameter and fix; the code's
  XML may be ``adios2.config_file`` (item 3).
"""

import logging
import math
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO
from fakes import run_ranks
from stagelearn.analytics.metrics import ErrorStats
from stagelearn.staging.field_check import check_fields
from stagelearn.staging.step_coder import StepCoder
from stagelearn.staging.wire import report_get

# ----------------------------------------------------------------------------- item 2: integers in situ


def raw_rows(fields, variables):
    """This rank's raw report rows of one step, as ``Producer.write`` builds them (no encoder yet)."""
    def one(comm):
        error, given, blocks = check_fields(0, comm.Get_rank(), variables, fields)
        assert error is None
        return {r["var"]: r for r in StepCoder(comm, variables).records(0, given, blocks, None)}

    return run_ranks(1, one)[0]


def test_int64_beyond_float32_is_reported_with_its_true_error_and_a_warning(caplog):
    y = np.full(16, 16777217, np.int64)  # 2**24 + 1: float32 holds 16777216
    with caplog.at_level(logging.WARNING, logger="stagelearn.staging.field_check"):
        rec = raw_rows({"y": y}, {"y": ((16,), (0,), (16,))})["y"]
    sent = rec["raw"]
    assert sent.dtype == np.float32 and int(sent[0]) == 16777216  # what travels today
    true_max = int(np.max(np.abs(y - sent.astype(np.int64))))  # in the caller's dtype: 1
    assert true_max == 1
    row = rec["report"]
    assert report_get(row, "max_abs_error") == true_max
    assert report_get(row, "sse") == 16.0
    assert not math.isinf(report_get(row, "local_psnr_db")) or report_get(row, "local_psnr_db") < 0
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "variable y" in warning and "16777217" in warning and "2**24" in warning


def test_integers_that_float32_holds_stay_exact_and_silent(caplog):
    y = np.arange(-2**24, -2**24 + 16, dtype=np.int64)
    z = np.arange(16, dtype=np.uint16)
    with caplog.at_level(logging.WARNING, logger="stagelearn.staging.field_check"):
        recs = raw_rows({"y": y, "z": z}, {"y": ((16,), (0,), (16,)), "z": ((16,), (0,), (16,))})
    for rec in recs.values():
        assert report_get(rec["report"], "max_abs_error") == 0 and report_get(rec["report"], "sse") == 0
        assert math.isinf(report_get(rec["report"], "local_psnr_db"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_float64_raw_block_reports_its_float32_rounding():
    t = np.linspace(0.0, 1.0, 16) + 1e-9
    row = raw_rows({"t": t}, {"t": ((16,), (0,), (16,))})["t"]["report"]
    expected = float(np.max(np.abs(t - t.astype(np.float32).astype(np.float64))))
    assert expected > 0 and report_get(row, "max_abs_error") == expected
    # item 5: counted in the code's own dtype (float64), sent as float32
    assert report_get(row, "raw_bytes") == 16 * 8 and report_get(row, "sent_bytes") == 16 * 4


INT_PRODUCER = r'''
import logging
import sys

import numpy as np
from mpi4py import MPI

from stagelearn.staging import Producer

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
run_dir, xml, n_steps = sys.argv[1], sys.argv[2], int(sys.argv[4])
N = 32
a, b = np.linspace(0, N, size + 1).astype(int)[rank:rank + 2]
x = np.linspace(0.0, 1.0, N)
passed = {}
with Producer(f"{run_dir}/sst/stream", comm=comm, config_file=xml, open_timeout_s=30, step_timeout_s=30) as prod:
    prod.define_variable("y", (N, N), (a, 0), (b - a, N))
    prod.open()
    for step in range(n_steps):
        g = np.sin(2 * np.pi * x[:, None] + 0.2 * step) * np.cos(2 * np.pi * x[None, :] - 0.1 * step)
        y = (2**24 + 1 + np.round(1000 * g)).astype(np.int64)  # odd values above 2**24 are not float32
        prod.write(step, {"y": y[a:b]})
        passed[f"y/{step}"] = y[a:b]
np.savez(f"{run_dir}/passed.p{rank}.npz", start=np.array([a]), **passed)
'''


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_int64_producer_steps_json_reports_the_true_error(tmp_path, monkeypatch):
    """End to end: int64 fields beyond 2**24 through a Producer; steps.json's error of every step
    (raw and coded) is the decoded field's against the int64 values passed, never 0."""
    import json

    import test_bad_data
    from stagelearn.staging.output import CompressedOutputReader

    monkeypatch.setattr(test_bad_data, "PRODUCER", INT_PRODUCER)  # the one pipeline helper, our producer script
    run_dir = test_bad_data.run_pipeline(tmp_path, "int64", steps=12)
    table = {row["step"]: row for row in json.loads((run_dir / "steps.json").read_text())}
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    versions = set()
    for step in reader.steps:
        exact, covered = test_bad_data.passed_field(run_dir, "y", step)
        assert covered.all()
        decoded = reader.read(step, "y").astype(np.float64)
        err = float(np.abs(decoded - exact).max())
        assert err >= 1.0, step  # 16777217 cannot come back
        assert table[step]["max_abs_error"] == pytest.approx(err, rel=1e-6), step
        assert math.isfinite(table[step]["psnr_db"]), step
        versions.add(test_bad_data.version(reader, step, "y"))
    reader.close()
    assert 0 in versions and len(versions) > 1  # raw steps and coded steps both checked
    # item 5: sizes in the code's own dtype (int64: 8 bytes a value), float32 as the second figure
    from stagelearn.staging.report import float32_figures

    n = 32 * 32
    assert all(row["raw_bytes"] == 8 * n for row in table.values())
    assert all(row["sent_bytes"] == 4 * n for row in table.values() if row["encoder_version"] == 0)
    coded = [row for row in table.values() if row["encoder_version"] > 0]
    sent = sum(row["sent_bytes"] for row in coded)
    figures = float32_figures(str(run_dir / "compressed.bp"))
    assert figures["raw_bytes_code_dtype"] == 8 * n * len(coded)
    assert figures["compression_ratio_float32"] == pytest.approx(4 * n * len(coded) / sent)
    assert figures["bits_per_value"] == pytest.approx(8 * sent / (n * len(coded)))
    assert "holds integers float32 cannot represent exactly" in (run_dir / "producer.log").read_text()


def test_integers_beyond_float64_precision_are_never_counted_exact():
    x = np.array([2**53 + 1, 2**62 + 1, 7], dtype=np.int64)
    st = ErrorStats.from_arrays(x, x.astype(np.float32))
    exact = [abs(int(v) - int(np.float32(v))) for v in x]  # Python integers: no rounding
    assert exact[0] == 1 and st.max_abs_error == float(max(exact)) and st.sse == float(sum(e * e for e in exact))


# ----------------------------------------------------------------------------- item 3: the code's XML

SAMPLES = REPO.parent / "shared" / "adios2-xml-samples"
TUTORIAL = SAMPLES / "ADIOS2-Examples__source__cpp__gray-scott__adios2.xml"  # ADIOS2's C++ Gray-Scott XML
GOOD = REPO / "examples" / "intransit" / "adios2.xml"  # a code XML that streams to staging correctly


def code_xml(tmp_path, text, name="code.xml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def sst_stream(**params):
    """A code XML whose SimulationOutput IO is SST with ``params``."""
    lines = "".join(f'      <parameter key="{k}" value="{v}"/>\n' for k, v in params.items())
    return (f'<?xml version="1.0"?>\n<adios-config>\n  <io name="SimulationOutput">\n    <engine type="SST">\n'
            f"{lines}    </engine>\n  </io>\n</adios-config>\n")


GOOD_PARAMS = {"RendezvousReaderCount": "1", "QueueLimit": "4", "QueueFullPolicy": "Block", "DataTransport": "WAN",
               "NetworkInterface": "lo"}


def in_transit_yaml(tmp_path, xml, *, config_file=None, **adios2):
    """A run YAML for an unchanged code that reads ``xml`` (its own XML, named on its command line)."""
    cfg = {"run_name": "code", "output_dir": str(tmp_path / "results"),
           "simulation": {"type": "external", "ranks": 1, "steps": 4, "plotgap": 1,
                          "command": [sys.executable, "writer.py", xml.name, "sim.bp"]},
           "staging": {"ranks": 1, "mode": "in_transit", "stream": "sim.bp"},
           "timeouts": {"open_s": 10, "step_s": 10, "run_s": 30}}
    if config_file or adios2:
        cfg["adios2"] = dict(adios2, **({"config_file": str(config_file)} if config_file else {}))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (tmp_path / "writer.py").write_text("raise SystemExit('never started: the run is refused first')\n")
    return path


def refused(proc, *words):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    for w in words:
        assert w in out, (w, out)
    return out


@pytest.mark.skipif(not TUTORIAL.is_file(), reason="shared ADIOS2 samples not present")
def test_validate_refuses_the_tutorial_xml_switched_to_sst(tmp_path, stagelearn_cli):
    text = TUTORIAL.read_text().replace('<engine type="BP5">', '<engine type="SST">', 1)  # only the stream IO
    xml = code_xml(tmp_path, text)
    out = refused(stagelearn_cli("validate", in_transit_yaml(tmp_path, xml)),
                  str(xml), "IO SimulationOutput", "QueueFullPolicy=Discard", 'value="Block"', "allow_discard",
                  "DataTransport=MPI", "no space for port_name tag", 'value="WAN"', "RendezvousReaderCount",
                  "--check")
    assert "OK" not in out.splitlines()[-1]


@pytest.mark.parametrize("params,words", [
    (dict(GOOD_PARAMS, QueueFullPolicy="Discard"), ["QueueFullPolicy=Discard", "allow_discard: true"]),
    ({k: v for k, v in GOOD_PARAMS.items() if k != "QueueLimit"}, ["QueueLimit is not set", 'value="4"']),
    (dict(GOOD_PARAMS, QueueLimit="0"), ["QueueLimit=0", "unbounded", 'value="4"']),
    (dict(GOOD_PARAMS, DataTransport="MPI"), ["DataTransport=MPI", 'value="WAN"']),
])
def test_validate_and_run_refuse_a_code_xml_that_loses_steps(tmp_path, stagelearn_cli, params, words):
    xml = code_xml(tmp_path, sst_stream(**params))
    run_yaml = in_transit_yaml(tmp_path, xml)
    refused(stagelearn_cli("validate", run_yaml), str(xml), "IO SimulationOutput", *words)
    refused(stagelearn_cli("run", run_yaml, "--no-progress", timeout=60), str(xml), *words)
    assert not (tmp_path / "results" / "code" / "compressed.bp").exists()  # refused before anything started


def test_discard_is_accepted_when_the_yaml_allows_it(tmp_path, stagelearn_cli):
    xml = code_xml(tmp_path, sst_stream(**dict(GOOD_PARAMS, QueueFullPolicy="Discard")))
    proc = stagelearn_cli("validate", in_transit_yaml(tmp_path, xml, allow_discard=True))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(xml) in proc.stdout and "OK" in proc.stdout


def test_the_good_code_xml_passes(tmp_path, stagelearn_cli):
    xml = code_xml(tmp_path, GOOD.read_text())
    proc = stagelearn_cli("validate", in_transit_yaml(tmp_path, xml))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"code's XML {xml} checked" in proc.stdout


def test_config_file_may_be_the_codes_own_xml(tmp_path, stagelearn_cli):
    """In transit no model stream exists: the code's XML (no ModelUpdates, no CompressedOutput IO) is enough."""
    from stagelearn.staging.config import load_config

    xml = code_xml(tmp_path, GOOD.read_text())
    run_yaml = in_transit_yaml(tmp_path, xml, config_file=xml)
    proc = stagelearn_cli("validate", run_yaml)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = load_config(run_yaml)
    assert cfg.adios2.output_io is None  # compressed.bp: a plain BP5 file
    assert (cfg.adios2.queue_limit, cfg.adios2.queue_full_policy) == (4, "Block")  # read from the code's XML
    bad = code_xml(tmp_path, sst_stream(**dict(GOOD_PARAMS, QueueFullPolicy="Discard")), name="bad.xml")
    refused(stagelearn_cli("validate", in_transit_yaml(tmp_path, bad, config_file=bad)), str(bad), "Discard")


# ----------------------------------------------------------------------------- item 5: counts


def test_in_transit_counts_come_from_the_stream_not_the_yaml(tmp_path):
    """A code that wrote 200 steps (0..199) while the YAML says steps 200, plotgap 1 (201 output steps):
    written 200, lost 0 (was: written 201, lost 1)."""
    from stagelearn.staging.config import load_config
    from stagelearn.staging.ledger import staging_part
    from stagelearn.staging.report import _producer_record, merge_run_ledger
    from stagelearn.staging.results import write_json

    xml = code_xml(tmp_path, GOOD.read_text())
    raw = yaml.safe_load(in_transit_yaml(tmp_path, xml).read_text())
    raw["simulation"].update(steps=200, plotgap=1)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "run.yaml")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    part = staging_part(str(run_dir))
    for step in range(200):
        part.add(step=step, rank=0, encoder_version=0, bytes=64)
    part.add(event="end", status="clean", last_step=199)
    part.close()
    summary = {"steps_written": 200, "steps_received": 200, "blocks_per_step": 1, "end": "clean"}
    write_json(str(run_dir / "staging_summary.json"), summary)
    assert _producer_record(cfg, str(run_dir), summary)["steps_written"] == 200
    counts = merge_run_ledger(cfg, str(run_dir))
    assert counts["steps_expected"] == 200 and counts["steps_lost"] == 0


def test_check_hint_keeps_the_io_the_user_passed(tmp_path, stagelearn_cli):
    """heatTransfer's IO is "writer": the closing hint of ``xml --check`` repeats ``--io writer``."""
    xml = code_xml(tmp_path, sst_stream(**dict(GOOD_PARAMS, QueueFullPolicy="Discard")).replace(
        '"SimulationOutput"', '"writer"'))
    run_yaml = in_transit_yaml(tmp_path, xml)
    proc = stagelearn_cli("xml", run_yaml, "--check", xml, "--io", "writer")
    out = refused(proc, "writer/QueueFullPolicy")
    assert f"stagelearn xml {run_yaml} --io writer > adios2.xml" in out
    # validate judges the code's SST IO though its name is not adios2.stream_io (SST readers need not share it)
    refused(stagelearn_cli("validate", run_yaml), str(xml), "IO writer", "QueueFullPolicy=Discard")


@pytest.mark.parametrize("edit,words", [
    # issue 19 item 6: the code aborts with MissingOperatorFailure (zfp is not compiled into this ADIOS2)
    (lambda t: t.replace("  </io>", '    <variable name="U">\n      <operation type="zfp"/>\n    </variable>\n  </io>'),
     ["<variable name=\"U\">: <operation type=\"zfp\">", "'zfp' is not compiled into this ADIOS2", "bzip2"]),
    # issue 19 item 6: ADIOS2's SST Open throws on StepsRoundRobin
    (lambda t: t.replace('value="WAN"/>', 'value="WAN"/>\n      <parameter key="StepDistributionMode" '
                                          'value="StepsRoundRobin"/>'),
     ["SimulationOutput/StepDistributionMode", "did you mean 'RoundRobin'?"]),
    # issue 15 item 7: ADIOS2 refuses the file
    (lambda t: t.replace("  </io>", '    <engine type="BP5"/>\n  </io>'), ["2 <engine> elements in one <io>"]),
    (lambda t: t.replace('value="Block"', 'value="Drop"'), ["'Drop' is not an SST QueueFullPolicy", "SimulationOutput/QueueFullPolicy"]),
])
def test_validate_refuses_what_adios2_refuses_in_the_code_xml(tmp_path, stagelearn_cli, edit, words):
    """What ADIOS2 2.12.1 throws on or aborts with in the code's own XML is refused by validate, before any start."""
    xml = code_xml(tmp_path, edit(GOOD.read_text()))
    out = refused(stagelearn_cli("validate", in_transit_yaml(tmp_path, xml)), str(xml), *words)
    assert out.count(words[0]) == 1, out  # said once
