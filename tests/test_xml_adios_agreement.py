"""`xml --inspect` / `--check` agree with ADIOS2 2.12.1 itself on what loads, what throws and what this build has.

Every case is loaded by the real adios2 in a child process (ADIOS constructor, declare_io, define the
variables, open a writer, one step, close: SST writers with RendezvousReaderCount=0, so nothing
waits for a reader), and its outcome (``ok``, ``throws``, ``aborts`` for a process killed by an
uncaught C++ exception or a crash) is compared with our verdict (an error finding or not).
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from conftest import child_env, run_cmd
from stagelearn.staging import sst_params
from stagelearn.staging.adios_build import build_facts
from stagelearn.staging.config import load_config
from stagelearn.staging.errors import ConfigError
from stagelearn.staging.xmllint import check, inspect
from test_xmlgen import GRAY_SCOTT

pytestmark = pytest.mark.sst

_LOADER = r'''
import json, os, sys
import mpi4py
mpi4py.rc.initialize = False
from mpi4py import MPI  # noqa: F401  (libmpi before an MPI-enabled adios2)
import numpy as np
import adios2
for case in json.load(open(sys.argv[1]))[int(sys.argv[2]):]:
    os.chdir(case["dir"])
    print("START", case["id"], flush=True)
    try:
        adios = adios2.Adios(case["path"])
        io = adios.declare_io(case["io"])
        vs = [io.define_variable(v, np.zeros(4096), [4096], [0], [4096]) for v in case["vars"]]
        engine = io.open("stream", adios2.Mode.Write)
        engine.begin_step()
        for v in vs:
            engine.put(v, np.linspace(0.0, 1.0, 4096))
        engine.end_step()
        engine.close()
        print("RESULT", case["id"], "ok", flush=True)
    except Exception as exc:
        print("RESULT", case["id"], "throws", " ".join(str(exc).split())[-300:], flush=True)
'''


def adios2_outcomes(tmp_path, cases):
    """``{id: (outcome, message)}`` for ``cases`` (``id -> (xml text, io name, [variables])``) loaded by adios2."""
    listing = []
    for cid, (text, io, variables) in cases.items():
        d = tmp_path / cid
        d.mkdir()
        name = "c.yaml" if text.startswith("- IO:") else "c.xml"  # ADIOS2's YAML form or its XML
        (d / name).write_text(text)
        listing.append({"id": cid, "dir": str(d), "path": str(d / name), "io": io, "vars": variables})
    (tmp_path / "cases.json").write_text(json.dumps(listing))
    (tmp_path / "loader.py").write_text(_LOADER)
    out, start = {}, 0
    while start < len(listing):  # a case that kills the process is "aborts"; the rest run in a new one
        proc = run_cmd([sys.executable, str(tmp_path / "loader.py"), str(tmp_path / "cases.json"), str(start)],
                       timeout=300, cwd=tmp_path, env=child_env())
        last = None
        for line in proc.stdout.splitlines():
            word = line.split(" ", 3)
            if word[0] == "START":
                last = word[1]
            elif word[0] == "RESULT":
                out[word[1]] = (word[2], word[3] if len(word) > 3 else "")
                last = None
        if last is not None:
            out[last] = ("aborts", proc.stderr[-300:])
        done = [c["id"] for c in listing].index(last or listing[-1]["id"]) + 1
        assert done > start, proc.stdout + proc.stderr
        start = done
    return out


def _xml(io_body, top=""):
    return (f'<?xml version="1.0"?>\n<adios-config>\n{top}\n  <io name="S">\n{io_body}\n  </io>\n'
            "</adios-config>\n")


def _sst(*params, var=""):
    """An SST writer IO that opens without a reader (RendezvousReaderCount=0) and a bounded queue."""
    ps = [("RendezvousReaderCount", "0"), ("QueueLimit", "2"), ("QueueFullPolicy", "Block"), *params]
    body = "".join(f'\n      <parameter key="{k}" value="{v}"/>' for k, v in ps)
    return _xml(f'    <engine type="SST">{body}\n    </engine>{var}')


_BP5 = '    <engine type="BP5"/>'

#: id -> (xml, variables the code defines, ADIOS2's outcome as found with 2.12.1)
CASES = {
    "two_engines": (_xml('    <engine type="SST"/>\n    <engine type="BP5"/>'), [], "throws"),
    "operation_operator_and_type": (_xml(_BP5 + '\n    <variable name="U"><operation operator="c" type="bzip2"/>'
                                         '</variable>', '  <operator name="c" type="bzip2"/>'), ["U"], "throws"),
    "operation_without_attributes": (_xml(_BP5 + '\n    <variable name="U"><operation/></variable>'), ["U"], "throws"),
    "operation_undefined_operator": (_xml(_BP5 + '\n    <variable name="U"><operation operator="nope"/></variable>'),
                                     ["U"], "throws"),
    "operation_zfp": (_xml(_BP5 + '\n    <variable name="U"><operation type="zfp">\n      <parameter key="accuracy" '
                           'value="0.001"/></operation></variable>'), ["U"], "aborts"),
    "operation_sz_sst": (_sst(var='\n    <variable name="U"><operation type="sz"/></variable>'), ["U"], "aborts"),
    "operation_unknown_type": (_xml(_BP5 + '\n    <variable name="U"><operation type="foo"/></variable>'), ["U"],
                               "aborts"),
    "operator_zfp_top_level": (_xml(_BP5, '  <operator name="c" type="zfp"/>'), [], "throws"),
    "operation_bzip2": (_xml(_BP5 + '\n    <variable name="U"><operation type="bzip2"/></variable>'), ["U"], "ok"),
    "operator_bzip2_by_name": (_xml(_BP5 + '\n    <variable name="U"><operation operator="c"/></variable>',
                                    '  <operator name="c" type="BZip2"/>'), ["U"], "ok"),
    "bp5_with_sst_keys": (_xml('    <engine type="BP5">\n      <parameter key="RendezvousReaderCount" value="0"/>\n'
                               '      <parameter key="StepDistributionMode" value="StepsRoundRobin"/>\n'
                               '      <parameter key="OpenTimeoutSecs" value="60.0"/>\n    </engine>'), ["U"], "ok"),
    "sst_good": (_sst(("OpenTimeoutSecs", "60.0"), ("FirstTimestepPrecious", "TRUE"),
                      ("StepDistributionMode", "roundROBIN"), ("MarshalMethod", "ffs")), ["U"], "ok"),
    "sst_StepsRoundRobin": (_sst(("StepDistributionMode", "StepsRoundRobin")), ["U"], "throws"),
    "sst_bool_1": (_sst(("FirstTimestepPrecious", "1")), ["U"], "throws"),
    "sst_bool_maybe": (_sst(("AlwaysProvideLatestTimestep", "maybe")), ["U"], "throws"),
    "sst_QueueFullPolicy_Drop": (_sst().replace('"QueueFullPolicy" value="Block"',
                                                '"QueueFullPolicy" value="Drop"'), ["U"], "throws"),
    "sst_MarshalMethod_json": (_sst(("MarshalMethod", "json")), ["U"], "throws"),
    "sst_RendezvousReaderCount_x": (_sst().replace('"RendezvousReaderCount" value="0"',
                                                   '"RendezvousReaderCount" value="x"'), ["U"], "throws"),
    "sst_QueueLimit_four": (_sst().replace('"QueueLimit" value="2"', '"QueueLimit" value="four"'), ["U"], "throws"),
    "sst_RegistrationMethod_cloud": (_sst(("RegistrationMethod", "Cloud")), ["U"], "throws"),
    "sst_CPCommPattern_max": (_sst(("CPCommPattern", "max")), ["U"], "throws"),
    "sst_ControlTransport_pigeon": (_sst(("ControlTransport", "pigeon")), ["U"], "aborts"),
    "sst_DataTransport_unknown": (_sst(("DataTransport", "carrierpigeon")), ["U"], "ok"),
    "yaml_operation_zfp": ("- IO: S\n  Engine:\n    Type: BP5\n  Variables:\n    - Variable: U\n      Operations:\n"
                           "        - Type: zfp\n          accuracy: 0.01\n", ["U"], "aborts"),
    "yaml_operation_bzip2": ("- IO: S\n  Engine:\n    Type: BP5\n  Variables:\n    - Variable: U\n      Operations:\n"
                             "        - Type: bzip2\n", ["U"], "ok"),
    "yaml_sst_StepsRoundRobin": ("- IO: S\n  Engine:\n    Type: SST\n    RendezvousReaderCount: 0\n    QueueLimit: 2\n"
                                 "    StepDistributionMode: StepsRoundRobin\n", ["U"], "throws"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return adios2_outcomes(tmp_path_factory.mktemp("agree"), {k: (x, "S", v) for k, (x, v, _) in CASES.items()})


@pytest.mark.parametrize("case", list(CASES))
def test_inspect_refuses_exactly_what_adios2_refuses(case, outcomes, tmp_path):
    """Our verdict (an error finding) equals ADIOS2's (throws or aborts) for each case; ADIOS2's outcome is
    also pinned, so a change of ADIOS2 shows here."""
    text, _, expected = CASES[case]
    outcome, message = outcomes[case]
    assert outcome == expected, (case, outcome, message)
    path = tmp_path / ("c.yaml" if text.startswith("- IO:") else "c.xml")
    path.write_text(text)
    errors = [f for f in inspect(path)[1] if f.severity == "error"]
    assert bool(errors) == (outcome != "ok"), (case, outcome, message, [f.format(path) for f in errors])


def test_refusal_messages_name_file_io_and_element(tmp_path):
    path = tmp_path / "c.xml"
    path.write_text(CASES["two_engines"][0])
    (f,) = [f for f in inspect(path)[1] if f.severity == "error"]
    assert f.format(path).startswith(f"{path}:4: error: S: 2 <engine> elements in one <io>")
    path.write_text(CASES["operation_operator_and_type"][0])
    (f,) = [f for f in inspect(path)[1] if f.severity == "error"]
    assert f.io == "S" and f.line == 6  # the <variable> line
    assert '<variable name="U">: <operation operator="c" type="bzip2">' in f.message and "keep one" in f.message


def test_operator_not_in_this_build_names_what_it_has(tmp_path):
    facts = build_facts()
    assert facts is not None and facts["version"] == "2.12.1"
    assert {"bzip2", "null"} <= facts["operators"] and "zfp" not in facts["operators"]
    path = tmp_path / "c.xml"
    path.write_text(CASES["operation_zfp"][0])
    (f,) = [f for f in inspect(path)[1] if f.severity == "error"]
    assert "'zfp' is not compiled into this ADIOS2" in f.message and "MissingOperatorFailure" in f.message
    assert "bzip2" in f.message and "variable 'U'" in f.message


def test_check_and_validate_refuse_zfp_on_the_stream(tmp_path, stagelearn_cli):
    """issue 19 item 6: a zfp operator on the streamed variable made the code abort while `xml --check` said OK."""
    good = (GRAY_SCOTT.parent / "intransit" / "adios2.xml").read_text()
    assert "</io>" in good
    bad = tmp_path / "code.xml"
    bad.write_text(good.replace("</io>", '  <variable name="U"><operation type="zfp"/></variable>\n  </io>', 1))
    cfg = load_config(GRAY_SCOTT.parent / "intransit" / "gray_scott.yaml")
    errors = [f for f in check(cfg, bad) if f.severity == "error"]
    assert len(errors) == 1 and "'zfp' is not compiled" in errors[0].message
    proc = stagelearn_cli("xml", GRAY_SCOTT.parent / "intransit" / "gray_scott.yaml", "--check", bad, timeout=120)
    assert proc.returncode == 2 and "zfp" in proc.stdout, proc.stdout + proc.stderr


def test_sst_enum_lists_are_adios2s(outcomes):
    """The tables match what ADIOS2's Open does: a listed value opens, an unlisted one throws."""
    assert sst_params.ENUMS["StepDistributionMode"] == ("AllToAll", "RoundRobin", "OnDemand")
    assert sst_params.ENUMS["QueueFullPolicy"] == ("Block", "Discard")
    assert sst_params.ENUMS["MarshalMethod"] == ("BP5", "BP", "FFS")
    assert outcomes["sst_good"][0] == "ok" and outcomes["sst_StepsRoundRobin"][0] == "throws"
    assert "Unknown Sst StepDistributionMode" in outcomes["sst_StepsRoundRobin"][1]
    problem = sst_params.value_problem("StepDistributionMode", "StepsRoundRobin")
    assert problem[0] == "error" and "did you mean 'RoundRobin'?" in problem[1]
    assert sst_params.value_problem("FirstTimestepPrecious", "1")[0] == "error"
    assert sst_params.value_problem("OpenTimeoutSecs", "60.0") is None  # std::stoi reads 60


def test_sst_keys_are_case_sensitive_in_adios2(tmp_path):
    """ADIOS2 2.12.1's SST ignores a key in another case (a bad value under it opens fine); we say so."""
    text = _sst(("stepdistributionmode", "StepsRoundRobin"))
    assert adios2_outcomes(tmp_path, {"lower": (text, "S", ["U"])})["lower"][0] == "ok"
    path = tmp_path / "c.xml"
    path.write_text(text)
    (f,) = inspect(path)[1]
    assert (f.severity, f.key) == ("error", "stepdistributionmode")
    assert "case-sensitively" in f.message and "'StepDistributionMode'" in f.message


def test_sst_keys_on_bp5_are_notes_and_misspellings_errors(tmp_path):
    """issue 15 item 7: SST keys on BP5 are notes for the day the IO becomes SST; misspelled SST keys are errors
    with the key meant, in the XML and in ADIOS2's YAML form."""
    path = tmp_path / "c.xml"
    path.write_text(CASES["bp5_with_sst_keys"][0])
    findings = inspect(path)[1]
    assert [(f.severity, f.key) for f in findings] == [("note", "RendezvousReaderCount"),
                                                       ("note", "StepDistributionMode")]
    assert "for the day this IO becomes SST" in findings[0].message
    assert "did you mean 'RoundRobin'?" in findings[1].message  # OpenTimeoutSecs: BP5 reads it as well
    yaml_form = tmp_path / "adios2.yaml"
    yaml_form.write_text(textwrap.dedent("""\
        - IO: SimulationOutput
          Engine:
            Type: BP5
            RendevouzReaderCount: 0
            QueueLimit: 4
        - IO: Stream
          Engine:
            Type: SST
            QueueLimit: 4
            OpenTimeOutSecs: 30
        """))
    got = [(f.severity, f.io, f.key, f.line) for f in inspect(yaml_form)[1]]
    assert got == [("error", "SimulationOutput", "RendevouzReaderCount", 4), ("note", "SimulationOutput", "QueueLimit", 5),
                   ("error", "Stream", "OpenTimeOutSecs", 10)]
    messages = [f.message for f in inspect(yaml_form)[1]]
    assert "did you mean 'RendezvousReaderCount'?" in messages[0] and "write 'OpenTimeoutSecs'" in messages[2]


def test_sst_key_in_the_run_yaml_points_to_the_xml(tmp_path):
    """An SST parameter written into the run YAML's adios2: section is named, with where it belongs."""
    run = tmp_path / "run.yaml"
    run.write_text("adios2:\n  RendevouzReaderCount: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(run)
    text = str(err.value)
    assert "adios2.RendevouzReaderCount" in text and "'RendezvousReaderCount'" in text
    assert "ADIOS2 XML" in text


def test_integers_are_read_as_std_stoi_reads_them(tmp_path):
    """SST reads integers with std::stoi: "60.0" is 60 (nothing to say), "4abc" is 4 (a warning), "four" throws."""
    path = tmp_path / "c.xml"
    path.write_text(_sst(("OpenTimeoutSecs", "60.0")).replace('"QueueLimit" value="2"', '"QueueLimit" value="4abc"'))
    got = [(f.severity, f.key) for f in inspect(path)[1]]
    assert got == [("warning", "QueueLimit")]
    assert "SST reads '4abc' as 4" in inspect(path)[1][0].message


def test_build_facts_are_asked_once_per_process():
    assert build_facts() is build_facts()
