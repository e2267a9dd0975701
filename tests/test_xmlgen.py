"""`stagelearn xml`: the generated ADIOS2 XML parses with ADIOS2 itself (checking it: test_xmllint.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from stagelearn.staging.config import load_config
from stagelearn.staging.xmlgen import generate
from stagelearn.staging.xmllint import check

REPO = Path(__file__).resolve().parents[1]
GRAY_SCOTT = REPO / "examples" / "gray_scott.yaml"
SAMPLES = REPO.parent / "shared" / "adios2-xml-samples"

STREAM = {"RendezvousReaderCount": "1", "QueueLimit": "4", "QueueFullPolicy": "Block", "DataTransport": "WAN",
          "NetworkInterface": "lo"}


@pytest.fixture(scope="module")
def cfg():
    return load_config(GRAY_SCOTT)


def _write(tmp_path, text, name="adios2.xml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _adios(path):
    from stagelearn.staging.adios import bindings

    bindings()  # loads libmpi before an MPI-enabled adios2
    import adios2

    return adios2.Adios(str(path))


def test_generated_xml_parses_with_adios2(cfg, tmp_path):
    path = _write(tmp_path, generate(cfg))
    ad = _adios(path)
    io = ad.declare_io(cfg.adios2.stream_io)
    assert io.engine_type() == "SST"
    assert io.parameters() == STREAM
    model = ad.declare_io(cfg.adios2.model_io)
    assert model.engine_type() == "SST"
    params = model.parameters()
    assert params["QueueFullPolicy"] == "Discard" and params["RendezvousReaderCount"] == "1"
    assert params["OpenTimeoutSecs"] == "60"  # timeouts.open_s of gray_scott.yaml
    assert ad.declare_io(cfg.adios2.output_io).engine_type() == "BP5"


def test_generated_xml_with_the_simulations_io_name(cfg, tmp_path):
    text = generate(cfg, io_name="gs_out")
    assert "adios2.stream_io: gs_out" in text  # tells the user what to set in the run YAML
    path = _write(tmp_path, text)
    io = _adios(path).declare_io("gs_out")
    assert io.engine_type() == "SST" and io.parameters() == STREAM
    assert check(cfg, path, io_name="gs_out") == []
    missing = check(cfg, path)  # without --io the default name is missing
    assert [(f.severity, f.io) for f in missing] == [("error", "SimulationOutput")]
    assert "gs_out" in missing[0].message


def test_generated_xml_has_explanations(cfg):
    text = generate(cfg)
    for key in STREAM:
        assert f"<!-- {key}:" in text
    assert "ADAPT" in text and "ib0" in text  # NetworkInterface on a cluster


def test_check_generated_is_clean(cfg, tmp_path):
    assert check(cfg, _write(tmp_path, generate(cfg))) == []
    # the packaged stagelearn.xml is what staging itself reads: also clean but for the keys the code sets
    # (OpenTimeoutSecs from timeouts, the stream's queue and interface from the YAML's adios2 section)
    set_by_code = {"QueueLimit", "QueueFullPolicy", "NetworkInterface"}
    assert [f for f in check(cfg, cfg.adios2.config_file)
            if f.severity == "error" and not (f.io == "SimulationOutput" and f.key in set_by_code)] == []


def test_cli_xml(stagelearn_cli, tmp_path):
    out = tmp_path / "adios2.xml"
    proc = stagelearn_cli("xml", GRAY_SCOTT, "-o", out, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith('<?xml version="1.0"?>')
    proc = stagelearn_cli("xml", GRAY_SCOTT, timeout=120)
    assert proc.returncode == 0 and "<adios-config>" in proc.stdout
    proc = stagelearn_cli("xml", GRAY_SCOTT, "--check", out, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""
    bad = tmp_path / "bad.xml"
    bad.write_text(out.read_text().replace('key="QueueLimit"', 'key="queuelimit"', 1))
    proc = stagelearn_cli("xml", GRAY_SCOTT, "--check", bad, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = bad.read_text().splitlines().index('      <parameter key="queuelimit" value="4"/>') + 1
    assert proc.stdout.strip() == (f"{bad}:{line}: error: SimulationOutput/queuelimit: SST matches keys "
                                   "case-sensitively: 'queuelimit' is ignored; write 'QueueLimit'")
    proc = stagelearn_cli("xml", GRAY_SCOTT, "--check", out, "--io", "gs_out", timeout=120)
    assert proc.returncode == 2 and "gs_out" in proc.stdout
