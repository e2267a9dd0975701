"""`stagelearn xml --check` and `--inspect`: the findings on existing ADIOS2 XML/YAML files (staging/xmllint.py)."""

from __future__ import annotations

import pytest
from stagelearn.staging.config import load_config
from stagelearn.staging.xmlgen import generate
from stagelearn.staging.xmllint import Finding, check, inspect
from test_xmlgen import GRAY_SCOTT, REPO, SAMPLES, STREAM, _adios, _write


@pytest.fixture(scope="module")
def cfg():
    return load_config(GRAY_SCOTT)


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
    QueueLimit: 16
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



def test_shipped_in_transit_example_passes_the_check(stagelearn_cli):
    """The unchanged code's own XML (stream IO only) passes: warnings for staging's IOs, no error."""
    example = REPO / "examples" / "intransit"
    proc = stagelearn_cli("xml", example / "gray_scott.yaml", "--check", example / "adios2.xml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- `stagelearn xml --inspect`: any ADIOS2 XML/YAML, no run YAML ---

def _io_xml(engine, params, name="out"):
    lines = ['<?xml version="1.0"?>', "<adios-config>", f'  <io name="{name}">', f'    <engine type="{engine}">']
    lines += [f'      <parameter key="{k}" value="{v}"/>' for k, v in params]
    return "\n".join(lines + ["    </engine>", "  </io>", "</adios-config>", ""])


def _got(findings):
    return [(f.severity, f.io, f.key, f.line) for f in findings]


ADIOS1 = """\
<?xml version="1.0"?>
<adios-config host-language="C">
  <adios-group name="temperature" coordination-communicator="comm">
    <var name="NX" type="integer"/>
    <var name="size" type="integer"/>
    <var name="rank" type="integer"/>
    <global-bounds dimensions="size,NX" offsets="rank,0">
      <var name="temperature" gwrite="t" type="double" dimensions="1,NX"/>
    </global-bounds>
  </adios-group>
  <method group="temperature" method="MPI"/>
  <buffer size-MB="20" allocate-time="now"/>
</adios-config>
"""


def test_inspect_adios1_file(cfg, tmp_path):
    path = _write(tmp_path, ADIOS1, "adios1.xml")
    summary, findings = inspect(path)
    assert summary == [] and _got(findings) == [("error", "", "", 3)]
    msg = findings[0].message
    assert "ADIOS 1.x" in msg and "<adios-group>, <method>, <buffer>" in msg and "<io name=...>" in msg
    assert "<engine type=...>" in msg
    assert check(cfg, path) == findings  # the run check says the same


def test_inspect_summary_and_clean_file(tmp_path):
    path = _write(tmp_path, _io_xml("SST", [("QueueLimit", "4"), ("QueueFullPolicy", "Block")], "SimulationOutput"))
    assert inspect(path) == (["IO SimulationOutput: engine SST; QueueLimit=4, QueueFullPolicy=Block"], [])
    (summary, findings) = inspect(_write(tmp_path, generate(load_config(GRAY_SCOTT)), "generated.xml"))
    assert len(summary) == 3 and summary[2] == "IO CompressedOutput: engine BP5; no parameters" and findings == []


def test_inspect_unknown_sst_key(tmp_path):
    """A misspelled SST key is an error naming the key meant; a key SST does not know and no SST key is near
    (a BP5 key) is a warning on SST and nothing on BP5."""
    path = _write(tmp_path, _io_xml("SST", [("QueueLimit", "4"), ("QueueLimt", "2"), ("NumAggregators", "1")]))
    findings = inspect(path)[1]
    assert _got(findings) == [("error", "out", "QueueLimt", 6), ("warning", "out", "NumAggregators", 7)]
    assert "not an SST parameter" in findings[0].message and "did you mean 'QueueLimit'?" in findings[0].message
    assert "did you mean" not in findings[1].message
    # on BP5: its own keys are BP5's business, a misspelled SST key bites the day the IO becomes SST
    (f,) = inspect(_write(tmp_path, _io_xml("BP5", [("QueueLimt", "2"), ("NumAggregators", "1")]), "bp5.xml"))[1]
    assert _got([f]) == [("error", "out", "QueueLimt", 5)] and "did you mean 'QueueLimit'?" in f.message


def test_inspect_key_case_sst_not_bp5(tmp_path):
    sst = _write(tmp_path, _io_xml("SST", [("queuelimit", "4"), ("QueueFullPolicy", "Block")]))
    findings = inspect(sst)[1]
    # SST ignores the lower-case key, so the queue is also unbounded
    assert _got(findings) == [("error", "out", "queuelimit", 5), ("warning", "out", "QueueLimit", 4)]
    assert "case-sensitively" in findings[0].message and "write 'QueueLimit'" in findings[0].message
    assert "not set" in findings[1].message and "unbounded" not in findings[0].message
    bp5 = _write(tmp_path, _io_xml("BP5", [("numaggregators", "4"), ("asyncwrite", "false")]), "bp5.xml")
    assert inspect(bp5) == (["IO out: engine BP5; numaggregators=4, asyncwrite=false"], [])


def test_inspect_duplicate_key(tmp_path):
    path = _write(tmp_path, _io_xml("SST", [("QueueLimit", "4"), ("QueueFullPolicy", "Block"), ("QueueLimit", "8"),
                                            ("QueueFullPolicy", "Block")]))
    summary, findings = inspect(path)
    assert summary == ["IO out: engine SST; QueueLimit=4, QueueFullPolicy=Block"]  # ADIOS2 keeps the first
    assert _got(findings) == [("error", "out", "QueueLimit", 7), ("warning", "out", "QueueFullPolicy", 8)]
    assert "keeps the first (line 5, value '4') and ignores '8'" in findings[0].message
    assert _adios(path).declare_io("out").parameters()["QueueLimit"] == "4"


def test_inspect_malformed_xml_line_and_column(tmp_path):
    text = _io_xml("SST", [("QueueLimit", "4"), ("QueueFullPolicy", "Block")]).replace('value="Block"', "value=Block")
    path = _write(tmp_path, text)
    assert inspect(path) == ([], [Finding("error", "", "", "malformed XML at column 46 (not well-formed (invalid token))", 6)])
    assert text.splitlines()[5][45] == "B"  # 1-based column 46 of line 6


def test_inspect_unbounded_sst_queue(tmp_path):
    missing = _write(tmp_path, _io_xml("SST", [("QueueFullPolicy", "Block")]))
    (f,) = inspect(missing)[1]
    assert (f.severity, f.key, f.line) == ("warning", "QueueLimit", 4)  # the <engine> line
    assert "SST's default 0 queues steps without limit" in f.message
    (g,) = inspect(_write(tmp_path, _io_xml("SST", [("QueueLimit", "0")]), "zero.xml"))[1]
    assert (g.severity, g.key, g.line) == ("warning", "QueueLimit", 5) and "unbounded" in g.message
    (h,) = inspect(_write(tmp_path, _io_xml("SST", [("QueueLimit", "four")]), "bad.xml"))[1]
    assert (h.severity, h.key) == ("error", "QueueLimit") and "not an integer" in h.message
    assert inspect(_write(tmp_path, _io_xml("BP5", []), "bp5.xml"))[1] == []  # no queue on files


def test_inspect_yaml_form(tmp_path):
    path = _write(tmp_path, YAML_CONFIG, "adios2.yaml")
    summary, findings = inspect(path)
    assert summary[1] == ("IO ModelUpdates: engine SST; RendezvousReaderCount=1, QueueLimit=16, QueueFullPolicy=Discard, "
                          "DataTransport=WAN, NetworkInterface=lo")
    assert summary[2] == "IO CompressedOutput: engine BP5; no parameters" and findings == []
    bad = YAML_CONFIG.replace("    QueueLimit: 4\n", "    queuelimit: 4\n", 1).replace("    Type: BP5\n", "    Type: BP5\n    aggregatortype: x\n")
    bad = bad.replace("    DataTransport: WAN\n", "    DataTransport: WAN\n    DataTransport: RDMA\n", 1)
    got = _got(inspect(_write(tmp_path, bad, "bad.yaml"))[1])
    assert got == [("error", "SimulationOutput", "DataTransport", 8), ("error", "SimulationOutput", "queuelimit", 5),
                   ("warning", "SimulationOutput", "QueueLimit", 3)]
    (f,) = inspect(_write(tmp_path, "IO: x\n", "map.yaml"))[1]
    assert f.severity == "error" and "a list of IOs" in f.message


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared ADIOS2 samples not present")
def test_inspect_real_samples():
    files = sorted(SAMPLES.glob("*.xml")) + sorted(SAMPLES.glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        summary, findings = inspect(path)
        assert summary and all(line.startswith("IO ") for line in summary), path
        assert [f for f in findings if f.severity == "error"] == [], path
    tnl = ("IO Output: engine SST; RendezvousReaderCount=1, QueueLimit=1, QueueFullPolicy=Block, DataTransport=WAN, "
           "OpenTimeoutSecs=60.0")
    assert inspect(SAMPLES / "TNL-LBM__adios2_sst.xml") == ([tnl], [])
    summary, findings = inspect(SAMPLES / "flowgen__adios2.xml")
    assert [s.split(";")[0] for s in summary] == ["IO writerIO: engine SST", "IO readerIO: engine SST"]
    assert _got(findings) == [("warning", "writerIO", "QueueFullPolicy", 21), ("warning", "writerIO", "SubStreams", 25),
                              ("warning", "readerIO", "SubStreams", 42), ("warning", "readerIO", "SubStreams", 41),
                              ("warning", "readerIO", "QueueLimit", 38)]
    summary, findings = inspect(SAMPLES / "ADIOS2__testing__adios2__yaml__config1.yaml")
    first = ("IO Test IO 1: engine BPFile; Threads=1, ProfileUnits=Microseconds, MaxBufferSize=20Mb, "
             "InitialBufferSize=1Mb, BufferGrowthFactor=2")
    assert summary == [first, "IO Test IO 2: engine BPFile; no parameters"]


def test_cli_xml_inspect(stagelearn_cli, tmp_path):
    good = _write(tmp_path, _io_xml("SST", [("QueueLimit", "4"), ("QueueFullPolicy", "Block")], "SimulationOutput"))
    proc = stagelearn_cli("xml", "--inspect", good, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "IO SimulationOutput: engine SST; QueueLimit=4, QueueFullPolicy=Block\n"
    warn = _write(tmp_path, _io_xml("SST", [("QueueFullPolicy", "Block")]), "warn.xml")
    proc = stagelearn_cli("xml", "--inspect", warn, timeout=120)
    assert proc.returncode == 0 and f"{warn}:4: warning: out/QueueLimit: not set" in proc.stdout
    adios1 = _write(tmp_path, ADIOS1, "adios1.xml")
    proc = stagelearn_cli("xml", "--inspect", adios1, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"{adios1}:3: error: an ADIOS 1.x configuration")
    assert "1 error(s), 0 warning(s)" in proc.stderr
    case = _write(tmp_path, _io_xml("SST", [("queueLimit", "4")]), "case.xml")
    assert stagelearn_cli("xml", "--inspect", case, timeout=120).returncode == 2
    assert stagelearn_cli("xml", "--inspect", tmp_path / "nope.xml", timeout=120).returncode == 2  # ConfigError
    proc = stagelearn_cli("xml", GRAY_SCOTT, "--inspect", good, timeout=120)
    assert proc.returncode == 2 and "--inspect takes only the file" in proc.stderr
    proc = stagelearn_cli("xml", timeout=120)
    assert proc.returncode == 2 and "give the run YAML" in proc.stderr
