"""A real existing code in transit (issue 15): ADIOS2's own C++ Gray-Scott tutorial simulation.

The tutorial (``examples/simulations/gray-scott`` of the cached ADIOS2 sdist) is compiled once
into the cache (:mod:`cpp_codes`) and run unchanged, with its own ``adios2.xml`` whose
``SimulationOutput`` engine is switched from BP5 to SST and nothing else. That file keeps the
tutorial's SST settings (``RendezvousReaderCount=0``, ``QueueLimit=1``, ``Discard``,
``DataTransport=MPI``), which ``stagelearn validate`` must name with their fix. With the fix, the
run loses no step, and every decoded step of U and V agrees with the same code's BP5 output
(noise 0: deterministic) to the max error and PSNR staging reported.

The code reads its XML through its settings JSON (``adios_config``), not its command line, so the
run YAML names the XML as ``adios2.config_file``, as a user of this code would.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import yaml

import cpp_codes
from conftest import MPIEXEC, run_cmd
from stagelearn.analytics.metrics import psnr
from stagelearn.staging.output import CompressedOutputReader
from stagelearn.staging.wire import report_get
from test_pipeline import ADIOS2_MPI


def end_to_end(test):
    """Marks of a test that starts the tutorial and staging (SST, mpiexec, ADIOS2 with MPI); the timeout
    leaves room for the first build (about 20 s on 2 idle cores, minutes on a busy CI runner)."""
    for mark in (pytest.mark.sst, pytest.mark.mpi, pytest.mark.timeout(900),
                 pytest.mark.skipif(not ADIOS2_MPI, reason="the tutorial links ADIOS2 built with MPI (make setup)")):
        test = mark(test)
    return test


L, ITERATIONS, PLOTGAP, RANKS = 16, 50, 5, 2  # 10 output steps of 16^3 float64 U and V from 2 ranks
OUTPUT_STEPS = ITERATIONS // PLOTGAP
SST_LINE = '<engine type="SST">'
#: The fix of the tutorial's leftover SST settings (README's "existing ADIOS2 code", examples/intransit/adios2.xml).
FIXED = {"RendezvousReaderCount": "1", "QueueLimit": "4", "QueueFullPolicy": "Block", "DataTransport": "WAN"}


@pytest.fixture(scope="module")
def tutorial():
    """The built tutorial's folder (binary, its adios2.xml and settings files); skip if it cannot be built here."""
    try:
        return cpp_codes.gray_scott()
    except cpp_codes.Unavailable as exc:
        pytest.skip(str(exc))


def switched_to_sst(tutorial):
    """The tutorial's XML with only the SimulationOutput engine changed from BP5 to SST."""
    text = (tutorial / "adios2.xml").read_text()
    head, sep, rest = text.partition('<io name="SimulationOutput">')
    assert sep and '<engine type="BP5">' in rest.split("</io>", 1)[0], "the tutorial's XML changed upstream"
    return head + sep + rest.replace('<engine type="BP5">', SST_LINE, 1)


def settings(tmp_path, tutorial, xml, name):
    """The tutorial's own settings file (settings-files.json) at a small size, noise 0, no checkpoint."""
    doc = json.loads((tutorial / "settings-files.json").read_text())
    doc.update(L=L, steps=ITERATIONS, plotgap=PLOTGAP, noise=0.0, checkpoint=False, output="gs.bp",
               adios_config=str(xml))
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=1))
    return path


def run_yaml(tmp_path, tutorial, xml, open_s=30):
    """In transit: the tutorial as the simulation command, staging reading the code's XML (``config_file``)."""
    code_settings = settings(tmp_path, tutorial, xml, "settings-sst.json")
    cfg = {"run_name": "tutorial", "output_dir": str(tmp_path / "results"),
           "simulation": {"type": "external", "ranks": RANKS, "steps": ITERATIONS, "plotgap": PLOTGAP,
                          "command": [str(tutorial / cpp_codes.TARGET), code_settings.name]},
           "staging": {"ranks": 2, "mode": "in_transit", "stream": "gs.bp"},
           "adios2": {"config_file": str(xml)},
           "learner": {"warmup_steps": 3, "publish_every": 4},
           "codec": {"psnr_db": 40.0},
           "timeouts": {"open_s": open_s, "step_s": 60, "run_s": 240}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def validate(tmp_path, tutorial, xml_text, stagelearn_cli, **kwargs):
    """Write the code's XML and the run YAML; ``stagelearn validate`` it."""
    xml = tmp_path / "adios2.xml"
    xml.write_text(xml_text)
    proc = stagelearn_cli("validate", run_yaml(tmp_path, tutorial, xml, **kwargs), timeout=120)
    return proc, xml


#: The two ways validate states a fix: `change it to <parameter key="K" value="V"/>` and,
#: as `xml --check` does, `IO/K: 'x'; expected 'V'`.
FIX_PATTERNS = (re.compile(r'<parameter key="(\w+)" value="([^"]*)"/>'),
                re.compile(r"SimulationOutput/(\w+): '[^']*'; expected '([^']*)'"))


def stated_fixes(out):
    """``{key: value}`` of every fix validate's error lines state for the SimulationOutput IO."""
    fixes = {}
    for line in out.splitlines():
        if "error" in line:
            for pattern in FIX_PATTERNS:
                for key, value in pattern.findall(line):
                    fixes.setdefault(key, value)
    return fixes


def apply_fixes(text, fixes):
    """``text`` with the SimulationOutput IO's parameters set to ``fixes`` (added where absent)."""
    head, sep, rest = text.partition('<io name="SimulationOutput">')
    io, end, tail = rest.partition("</io>")
    for key, value in fixes.items():
        io, n = re.subn(rf'(<parameter key="{key}" value=")[^"]*(")', rf"\g<1>{value}\g<2>", io)
        if n == 0:
            io = io.replace(SST_LINE, f'{SST_LINE}\n            <parameter key="{key}" value="{value}"/>', 1)
    return head + sep + io + end + tail


@end_to_end
def test_validate_names_the_tutorials_leftover_sst_settings(tmp_path, tutorial, stagelearn_cli):
    proc, xml = validate(tmp_path, tutorial, switched_to_sst(tutorial), stagelearn_cli)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    errors = [ln for ln in out.splitlines() if "error" in ln]
    for key, fix in (("QueueFullPolicy=Discard", 'value="Block"'), ("DataTransport=MPI", 'value="WAN"')):
        line = next((ln for ln in errors if key in ln), None)
        assert line is not None, (key, out)
        assert str(xml) in line and "IO SimulationOutput" in line and fix in line, line


@end_to_end
def test_the_fixes_validate_states_are_enough(tmp_path, tutorial, stagelearn_cli):
    """Apply exactly what validate says to change until it passes; the run then loses no step."""
    text, applied = switched_to_sst(tutorial), {}
    for _ in range(4):
        proc, _ = validate(tmp_path, tutorial, text, stagelearn_cli, open_s=10)
        if proc.returncode == 0:
            break
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        fixes = stated_fixes(out)
        assert fixes and fixes.items() - applied.items(), f"validate refuses but states no new fix:\n{out}"
        applied.update(fixes)
        text = apply_fixes(text, fixes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = stagelearn_cli("run", tmp_path / "run.yaml", "--no-progress", timeout=300)
    summary = json.loads((tmp_path / "results" / "tutorial" / "summary.json").read_text())
    assert proc.returncode == 0 and summary["steps_lost"] == 0 and summary["steps_received"] == OUTPUT_STEPS, (
        applied, proc.stderr[-2000:], summary)


def read_bp5(path, var, step):
    """``var`` at ``step`` of a BP5 file, read with the plain ADIOS2 bindings (float64 as written)."""
    from stagelearn.staging.adios import bindings

    b = bindings()
    adios = b.ADIOS()  # keep a reference: the IO dies with its ADIOS object
    io = adios.DeclareIO(f"check-{var}-{step}")
    engine = io.Open(str(path), b.Mode.ReadRandomAccess)
    try:
        v = io.InquireVariable(var)
        v.SetStepSelection([step, 1])
        out = np.zeros([int(n) for n in v.Shape()], dtype=np.int32 if var == "step" else np.float64)
        engine.Get(v, out, b.Mode.Sync)
        return out
    finally:
        engine.Close()


@end_to_end
def test_tutorial_in_transit_matches_its_own_bp5_output(tmp_path, tutorial, stagelearn_cli):
    """With the fix: 0 steps lost, and every step of U and V decoded from compressed.bp agrees with the
    same code's BP5 file to the max error and PSNR staging reported (computed here from the BP5 values)."""
    # the same code, same settings, its own XML unchanged (BP5): the reference
    ref_dir = tmp_path / "bp5"
    ref_dir.mkdir()
    ref_settings = settings(ref_dir, tutorial, tutorial / "adios2.xml", "settings-bp5.json")
    ref = run_cmd([MPIEXEC, "-n", str(RANKS), str(tutorial / cpp_codes.TARGET), str(ref_settings)], timeout=120,
                  cwd=ref_dir)
    assert ref.returncode == 0, ref.stdout[-2000:] + ref.stderr[-2000:]
    bp5 = ref_dir / "gs.bp"

    # in transit, with the fix of the leftover SST settings
    fixed = apply_fixes(switched_to_sst(tutorial), FIXED)
    proc, xml = validate(tmp_path, tutorial, fixed, stagelearn_cli)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"code's XML {xml} checked" in proc.stdout
    proc = stagelearn_cli("run", tmp_path / "run.yaml", "--no-progress", timeout=400)
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    run_dir = tmp_path / "results" / "tutorial"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_lost"] == 0, summary
    assert summary["steps_written"] == OUTPUT_STEPS and summary["steps_received"] == OUTPUT_STEPS, summary
    assert summary["encoder_versions"] >= 1, summary  # coded steps are checked, not only raw ones
    table = {row["step"]: row for row in json.loads((run_dir / "steps.json").read_text())}

    reader = CompressedOutputReader(run_dir / "compressed.bp")
    try:
        assert reader.fields() == ["U", "V"]  # discovered on the stream (the int `step` is the code's step)
        assert reader.steps == list(range(OUTPUT_STEPS))
        code_steps = reader.summary("code_step")
        coded = lossy = 0
        for s in reader.steps:
            assert int(code_steps[s][0]) == int(read_bp5(bp5, "step", s)) == PLOTGAP * (s + 1)  # aligned with BP5
            for var in ("U", "V"):
                want = read_bp5(bp5, var, s)
                got = reader.read(s, var)
                assert got.shape == want.shape == (L, L, L)
                rows = reader.reports(s, var)
                assert len(rows) == RANKS
                coded += any(report_get(r, "encoder_version") > 0 for r in rows)
                err = float(np.max(np.abs(got.astype(np.float64) - want)))  # in the code's dtype (float64)
                reported_err = max(report_get(r, "max_abs_error") for r in rows)
                lossy += err > 1e-6  # beyond float32 rounding of values near 1: a coded tile's error
                assert err <= reported_err * (1 + 1e-12), (var, s, err, reported_err)
                assert err == pytest.approx(reported_err, rel=1e-9), (var, s)
                mine = psnr(want, got)  # range of the BP5 field, MSE over the whole field
                reported = table[s]["psnr_db_per_variable"][var]
                assert math.isfinite(mine) and mine == pytest.approx(reported, abs=1e-6), (var, s, mine, reported)
                assert table[s]["max_abs_error"] >= err
        assert coded >= 2 and lossy >= 1, f"{coded} coded, {lossy} lossy fields checked: too few"
        last = reader.steps[-1]
        last_v = reader.read(last, "V")
    finally:
        reader.close()
    # `stagelearn decode` returns the same field as the reader
    out = tmp_path / "v.npy"
    dec = stagelearn_cli("decode", run_dir / "compressed.bp", "--step", last, "--var", "V", "-o", out, timeout=120)
    assert dec.returncode == 0, dec.stderr
    np.testing.assert_array_equal(np.load(out), last_v)


# ----------------------------------------------------------------------------- the builder's skip reasons


def test_missing_cmake_or_mpicxx_is_a_clear_skip_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(cpp_codes.shutil, "which", lambda name: None)
    monkeypatch.setattr(cpp_codes, "CMAKE_FALLBACK", str(tmp_path / "no-cmake"))
    monkeypatch.setattr(cpp_codes.sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(cpp_codes.Unavailable) as exc:
        cpp_codes.toolchain()
    msg = str(exc.value)
    assert "mpicxx" in msg and "pip install mpich" in msg and "cmake" in msg and str(tmp_path / "bin") in msg


def test_a_serial_adios2_wheel_is_a_clear_skip_reason(monkeypatch, tmp_path):
    """STAGELEARN_ADIOS2=wheel: the adios2 package has no C++ install (lib/cmake/adios2) around it."""
    init = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "adios2" / "__init__.py"
    init.parent.mkdir(parents=True)
    init.write_text("")
    spec = type("Spec", (), {"origin": str(init)})()
    monkeypatch.setattr(cpp_codes.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(cpp_codes.Unavailable, match="STAGELEARN_ADIOS2=mpi"):
        cpp_codes.adios2_prefix()
