"""`stagelearn xml`: the generated ADIOS2 XML parses with ADIOS2 itself; the checker's findings."""

from __future__ import annotations

from pathlib import Path

import pytest
from stagelearn.staging.config import load_config
from stagelearn.staging.xmlgen import Finding, check, generate

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
    # the packaged stagelearn.xml is what staging itself reads: also clean but for OpenTimeoutSecs (set by code)
    assert [f for f in check(cfg, cfg.adios2.config_file) if f.severity == "error"] == []


def _crafted(cfg, tmp_path, old, new, count=1):
    text = generate(cfg)
    assert text.count(old) >= 1, old
    return _write(tmp_path, text.replace(old, new, count))


def test_check_missing_io(cfg, tmp_path):
    """A missing stream IO is an error; the model and output IOs are staging's (an unchanged code's own
    file streams only), so their absence is a warning."""
    path = _crafted(cfg, tmp_path, '<io name="ModelUpdates">', '<io name="Models">')
    findings = check(cfg, path)
    assert [(f.severity, f.io, f.key) for f in findings] == [("warning", "ModelUpdates", "")]
    assert "missing" in findings[0].message
    path = _crafted(cfg, tmp_path, '<io name="SimulationOutput">', '<io name="Other">')
    assert ("error", "SimulationOutput", "") in [(f.severity, f.io, f.key) for f in check(cfg, path)]


def test_check_wrong_engine(cfg, tmp_path):
    text = generate(cfg).replace('<engine type="SST">', '<engine type="BP4">', 1)
    path = _write(tmp_path, text)
    findings = check(cfg, path)
    assert [(f.severity, f.io) for f in findings] == [("error", "SimulationOutput")]
    assert "BP4" in findings[0].message and "SST" in findings[0].message
    line = text.splitlines().index('    <engine type="BP4">') + 1
    assert findings[0].line == line


def test_check_engine_case_is_reported_not_an_error(cfg, tmp_path):
    findings = check(cfg, _crafted(cfg, tmp_path, '<engine type="SST">', '<engine type="sst">'))
    assert [(f.severity, f.io) for f in findings] == [("warning", "SimulationOutput")]
    assert "case-insensitive" in findings[0].message


def test_check_key_case(cfg, tmp_path):
    text = generate(cfg).replace('key="QueueLimit"', 'key="queuelimit"', 1)
    path = _write(tmp_path, text)
    findings = check(cfg, path)
    assert [(f.severity, f.io, f.key) for f in findings] == [("error", "SimulationOutput", "queuelimit")]
    assert "case-sensitively" in findings[0].message and "'QueueLimit'" in findings[0].message
    assert findings[0].line == text.splitlines().index('      <parameter key="queuelimit" value="4"/>') + 1


def test_check_duplicate_key(cfg, tmp_path):
    text = generate(cfg)
    dup = '      <parameter key="QueueFullPolicy" value="Block"/>\n'
    text = text.replace(dup, dup + '      <parameter key="QueueFullPolicy" value="Discard"/>\n', 1)
    path = _write(tmp_path, text)
    findings = check(cfg, path)
    assert [(f.severity, f.io, f.key) for f in findings] == [("error", "SimulationOutput", "QueueFullPolicy")]
    assert "duplicate" in findings[0].message and "keeps the first" in findings[0].message
    # ADIOS2 agrees: the first value wins
    assert _adios(path).declare_io("SimulationOutput").parameters()["QueueFullPolicy"] == "Block"
    same = _write(tmp_path, generate(cfg).replace(dup, dup * 2, 1), "same.xml")
    assert [(f.severity, f.key) for f in check(cfg, same)] == [("warning", "QueueFullPolicy")]


def test_check_wrong_and_missing_values(cfg, tmp_path):
    text = generate(cfg).replace('key="QueueFullPolicy" value="Block"', 'key="QueueFullPolicy" value="Discard"', 1)
    text = text.replace('      <parameter key="DataTransport" value="WAN"/>\n', "", 1)
    findings = check(cfg, _write(tmp_path, text))
    got = {(f.severity, f.io, f.key) for f in findings}
    assert got == {("error", "SimulationOutput", "QueueFullPolicy"), ("error", "SimulationOutput", "DataTransport")}


def test_check_malformed_xml_line(cfg, tmp_path):
    lines = generate(cfg).splitlines()
    bad = next(i for i, ln in enumerate(lines) if 'key="QueueLimit"' in ln)
    lines[bad] = '      <parameter key="QueueLimit" value="4">'  # not closed
    findings = check(cfg, _write(tmp_path, "\n".join(lines) + "\n"))
    assert len(findings) == 1
    f = findings[0]
    assert f.severity == "error" and "malformed" in f.message
    assert f.line is not None and f.line > bad  # the parser notices at the mismatched end tag
    nested = _write(tmp_path, '<?xml version="1.0"?>\n<adios-config>\n  <io name="a">\n  <<\n</adios-config>\n', "b.xml")
    (g,) = check(cfg, nested)
    assert g.line == 4 and g.format(nested).startswith(f"{nested}:4: error: malformed XML")


def test_check_missing_file_raises(cfg, tmp_path):
    from stagelearn.staging.errors import ConfigError

    with pytest.raises(ConfigError):
        check(cfg, tmp_path / "nope.xml")


def test_finding_format():
    assert Finding("error", "io", "Key", "bad", 3).format("f.xml") == "f.xml:3: error: io/Key: bad"
    assert Finding("warning", "", "", "x").format("f.xml") == "f.xml: warning: x"


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared ADIOS2 samples not present")
def test_check_real_samples(cfg):
    files = sorted(SAMPLES.glob("*.xml")) + sorted(SAMPLES.glob("*.yaml"))
    assert files
    for path in files:
        findings = check(cfg, path)
        assert findings, path  # none of them is set up for stagelearn
        assert all(f.severity in ("error", "warning") for f in findings)
        for f in findings:
            f.format(path)
    flowgen = SAMPLES / "flowgen__adios2.xml"
    if flowgen.exists():
        keys = {(f.severity, f.key) for f in check(cfg, flowgen, io_name="writerIO") if f.io == "writerIO"}
        assert ("warning", "QueueFullPolicy") in keys  # duplicate key with the same value
        assert ("warning", "SubStreams") in keys  # a BP4 key on SST


YAML_CONFIG = """\
- IO: SimulationOutput
  Engine:
    Type: SST
    RendezvousReaderCount: 1
    QueueLimit: 4
    QueueFullPolicy: Block
    DataTransport: WAN
    NetworkInterface: lo
- IO: ModelUpdates
  Engine:
    Type: SST
    RendezvousReaderCount: 1
    QueueLimit: 4
    QueueFullPolicy: Discard
    DataTransport: WAN
    NetworkInterface: lo
- IO: CompressedOutput
  Engine:
    Type: BP5
"""


def test_check_adios2_yaml_form(cfg, tmp_path):
    path = _write(tmp_path, YAML_CONFIG, "adios2.yaml")
    assert _adios(path).declare_io("SimulationOutput").parameters() == STREAM
    assert check(cfg, path) == []
    bad = _write(tmp_path, YAML_CONFIG.replace("    QueueLimit: 4\n", "    queuelimit: 4\n", 1)
                 .replace("    NetworkInterface: lo\n", "    NetworkInterface: lo\n    NetworkInterface: lo\n", 1), "bad.yaml")
    got = [(f.severity, f.io, f.key, f.line) for f in check(cfg, bad)]
    # SST ignores the lower-case key; ADIOS2's YAML reader rejects a duplicate key even with the same value
    assert got == [("error", "SimulationOutput", "NetworkInterface", 9), ("error", "SimulationOutput", "queuelimit", 5)]


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


def test_shipped_in_transit_example_passes_the_check(stagelearn_cli):
    """The unchanged code's own XML (stream IO only) passes: warnings for staging's IOs, no error."""
    example = REPO / "examples" / "intransit"
    proc = stagelearn_cli("xml", example / "gray_scott.yaml", "--check", example / "adios2.xml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
