"""Issue 18: a newcomer's stumbles, each one a test (report for Producer scripts, stage's final line,
config errors that point at the fix, validate catching what run dies on, clear CLI messages)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import REPO, stage_and_script

EXAMPLE = REPO / "examples" / "own_simulation"


def _load_example():
    spec = importlib.util.spec_from_file_location("own_sim_example", EXAMPLE / "my_sim.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_own_simulation(tmp_path, steps):
    """The example's README commands: `stagelearn stage` (1 rank) and `my_sim.py` (2 ranks), apart."""
    run_dir = tmp_path / "run"
    sim, stage_rc, stage_out = stage_and_script(
        tmp_path, EXAMPLE / "my_run.yaml", run_dir,
        [EXAMPLE / "my_sim.py", "--run-dir", run_dir, "--steps", steps], sim_ranks=2)
    assert sim.returncode == 0, f"my_sim.py failed ({sim.returncode}):\n{sim.stdout[-2000:]}\n{sim.stderr[-3000:]}"
    assert stage_rc == 0, f"stagelearn stage failed ({stage_rc}):\n{stage_out[-3000:]}"
    return run_dir, stage_out


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_report_and_stage_summary_for_a_producer_script(tmp_path, stagelearn_cli):
    """Items 5 and 6: `stagelearn report` works for a Producer script; `stage` ends with a summary line."""
    steps = 16
    run_dir, stage_out = _run_own_simulation(tmp_path, steps)

    # item 6: staging's own final line, with the figures of staging_summary.json
    staging = json.loads((run_dir / "staging_summary.json").read_text())
    last_line = [ln for ln in stage_out.splitlines() if ln.strip()][-1]
    assert last_line.startswith("stagelearn stage:"), stage_out[-2000:]
    assert f"received {staging['steps_received']}" in last_line and f"lost {staging['steps_lost']}" in last_line
    assert f"{staging['compression_ratio']:.2f}" in last_line and f"{staging['psnr_db']:.2f} dB" in last_line

    # item 5: the Producer left its record; report gives the table, summary.json and summary.png
    record = json.loads((run_dir / "producer.json").read_text())
    assert record["steps_written"] == steps and record["ranks"] == 2 and record["status"] == "clean"
    proc = stagelearn_cli("report", EXAMPLE / "my_run.yaml", "--run-dir", run_dir, timeout=120)
    assert proc.returncode == 0, f"report failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "raw bytes" in proc.stdout and f"steps written {steps}, received {steps}, lost 0" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_written"] == steps and summary["steps_lost"] == 0
    assert summary["simulation"]["type"] == "own code (Producer)" and summary["simulation"]["ranks"] == 2
    assert (run_dir / "summary.png").stat().st_size > 1000

    # the decoded last step against the field computed here, independently of the run
    from stagelearn.staging.output import CompressedOutputReader
    mod = _load_example()
    n = mod.N
    y, x = np.meshgrid(np.arange(n) / n, np.arange(n) / n, indexing="ij")
    truth = mod.field(float(steps - 1), y, x)
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    try:
        decoded = reader.read(steps - 1, "T")
    finally:
        reader.close()
    mse = float(np.mean((decoded.astype(np.float64) - truth) ** 2))
    psnr = 10 * np.log10(float(np.ptp(truth)) ** 2 / mse)
    assert psnr >= 39.5  # my_run.yaml: codec.psnr_db 40


# --- item 3: unknown keys get the nearest name, YAML syntax errors the right line -------------------
def _write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _problems(path):
    from stagelearn.staging.config import load_config
    from stagelearn.staging.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems or [str(info.value)]


@pytest.mark.parametrize("text, wanted", [
    ("codec:\n  psnr_dB: 45\n", "codec.psnr_dB: Extra inputs are not permitted (got 45); unknown key (did you mean 'psnr_db'?)"),
    ("staging:\n  tile_shap: [8, 8]\n", "(did you mean 'tile_shape'?)"),
    ("learner:\n  publish_evry: 3\n", "(did you mean 'publish_every'?)"),
    ("simulation:\n  type: heat2d\n  kapa: 0.2\n", "simulation.kapa: Extra inputs are not permitted (got 0.2); unknown key "
     "(did you mean 'kappa'?)"),
    ("timeouts:\n  opn_s: 3\n", "(did you mean 'open_s'?)"),
])
def test_unknown_key_names_the_nearest_one(tmp_path, text, wanted):
    problems = _problems(_write(tmp_path, text))
    assert len(problems) == 1 and wanted in problems[0], problems


def test_unknown_key_without_a_near_one_gets_no_guess(tmp_path):
    (problem,) = _problems(_write(tmp_path, "codec:\n  zzzzzz: 1\n"))
    assert "codec.zzzzzz" in problem and "did you mean" not in problem


@pytest.mark.parametrize("lines, bad_line", [
    (["run_name: x", "staging:", "  ranks: 1", "  tile_shape: [8, 8]", "codec:", "  psnr_db: 45",
      "  error_bound 0.1", "  rate: 3", "metrics:", "  sz3_every: 0"], 7),     # a key without ':'
    (["run_name: x", "staging:", "  ranks: 1", "  tile_shape: [8, 8", "codec:", "  psnr_db: 45"], 4),  # unclosed [
    (["run_name: x", "staging:", "  ranks: 1", "   tile_shape: [8, 8]", "codec:", "  psnr_db: 45"], 4),  # indentation
    (["run_name: x", "staging:", "  ranks: 1", "  tile_shape: [8, 8]", " codec: 3", "metrics:", "  a: 1"], 5),
    (["run_name: x", "staging:", "  name: \"abc", "codec:", "  psnr_db: 45"], 3),  # unclosed quote
])
def test_yaml_syntax_error_names_the_line_of_the_mistake(tmp_path, lines, bad_line):
    path = _write(tmp_path, "\n".join(lines) + "\n")
    (problem,) = _problems(path)
    assert problem.startswith(f"{path}:{bad_line}:") and "invalid YAML" in problem, problem


# --- item 2: validate catches tile dimensions that run would die on ---------------------------------
@pytest.mark.parametrize("sim, tile, ndim", [("gray_scott", [4, 4], 3), ("heat2d", [4, 4, 4], 2),
                                             ("gyrokinetic", [4, 4, 4], 5)])
def test_tile_shape_must_match_the_simulation_dimensionality(tmp_path, sim, tile, ndim):
    (problem,) = _problems(_write(tmp_path, f"simulation:\n  type: {sim}\nstaging:\n  tile_shape: {tile}\n"))
    assert f"staging.tile_shape {tile} has {len(tile)} dimensions but the {sim} simulation's fields have {ndim}" in problem
    assert "Value error" not in problem and "<top>" not in problem


def test_validate_exits_2_on_tile_dimensions(tmp_path, stagelearn_cli):
    path = _write(tmp_path, "simulation:\n  type: gray_scott\n  ranks: 2\nstaging:\n  tile_shape: [4, 4]\n")
    proc = stagelearn_cli("validate", path, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "tile_shape [4, 4] has 2 dimensions" in proc.stderr and "e.g. [4, 4, 4]" in proc.stderr


def test_matching_tiles_and_own_code_tiles_validate(tmp_path):
    from stagelearn.staging.config import load_config

    assert load_config(_write(tmp_path, "simulation:\n  type: heat2d\nstaging:\n  tile_shape: [8, 8]\n")).simulation_given
    cfg = load_config(_write(tmp_path, "staging:\n  tile_shape: [8, 8]\n", "own.yaml"))  # no simulation: own code
    assert not cfg.simulation_given and cfg.staging.tile_shape == (8, 8)


# --- item 4: no simulation section: the user's own code, not gray_scott x 4 -------------------------
def test_validate_without_simulation_section_says_own_code(tmp_path, stagelearn_cli):
    path = _write(tmp_path, "staging:\n  ranks: 1\n  tile_shape: [8, 8]\ncodec:\n  psnr_db: 40\n")
    proc = stagelearn_cli("validate", path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "gray_scott" not in proc.stdout and "your own code" in proc.stdout and "Producer" in proc.stdout
    proc = stagelearn_cli("validate", EXAMPLE / "my_run.yaml", timeout=60)  # a section given: named as before
    assert proc.returncode == 0 and "simulation heat2d x 2 ranks" in proc.stdout


# --- item 6: the final line of `stagelearn stage` ---------------------------------------------------
def test_stage_summary_line_figures():
    from stagelearn.staging.sides import stage_summary_line

    line = stage_summary_line({"steps_received": 30, "steps_lost": 0, "encoder_versions": 3, "encoded_steps": 24,
                               "compression_ratio": 23.04, "psnr_db": 45.912}, "run")
    assert line == ("stagelearn stage: received 30 steps, lost 0; 3 encoders; after the first encoder (24 steps) "
                    "compression ratio 23.04, PSNR 45.91 dB; results in run")
    line = stage_summary_line({"steps_received": 2, "steps_lost": 0, "encoder_versions": 0, "encoded_steps": 0,
                               "compression_ratio": None, "psnr_db": "inf"}, "run")
    assert "compression ratio -, PSNR -;" in line


# --- items 8-10: messages and help ------------------------------------------------------------------
@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_producer_without_staging_in_a_missing_run_dir(tmp_path, mpirun):
    proc = mpirun(1, """
        from mpi4py import MPI
        from stagelearn.staging import Producer
        from stagelearn.staging.config import default_xml
        from stagelearn.staging.errors import StreamTimeoutError
        try:
            with Producer("never/made/sst/stream", comm=MPI.COMM_WORLD, config_file=default_xml(),
                          open_timeout_s=2, step_timeout_s=5) as prod:
                prod.define_variable("T", (8, 8), (0, 0), (8, 8))
                prod.open()
        except StreamTimeoutError as exc:
            print("MESSAGE", exc)
        """, timeout=90)
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("MESSAGE")]
    assert "stale" not in line and "timeouts.open_s" not in line, line
    assert "(open_timeout_s=2)" in line and "does not exist" in line and "never/made/sst" in line
    assert not (tmp_path / "never").exists()


def test_strip_ansi():
    from stagelearn.staging.errors import strip_ansi

    raw = "\x1b[1;36m[Mon Dec 07 2026]\x1b[1;34m [ADIOS2 EXCEPTION]\x1b[0m <Engine> : File x.bp could not be found\x1b[0m"
    assert strip_ansi(raw) == "[Mon Dec 07 2026] [ADIOS2 EXCEPTION] <Engine> : File x.bp could not be found"


@pytest.mark.parametrize("name, content", [("nothere.bp", None), ("notbp.bp", "hello\n")])
def test_decode_missing_or_foreign_file_exits_2_in_one_line(tmp_path, stagelearn_cli, name, content):
    if content is not None:
        (tmp_path / name).write_text(content)
    proc = stagelearn_cli("decode", name, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stagelearn decode: error: {name}: ")
    assert "\x1b" not in proc.stderr and "Traceback" not in proc.stderr


def test_help_is_plain_text_with_exit_codes_and_examples(stagelearn_cli):
    from stagelearn.staging.cli import EXIT_CODES

    top = stagelearn_cli("--help", timeout=60).stdout
    assert "``" not in top and ":func:" not in top
    assert "exit codes:" in top and "examples:" in top and "stagelearn report run.yaml --run-dir run" in top
    for _, code in EXIT_CODES:
        assert f"\n  {code} " in top, code
    for sub in ("run", "validate", "report", "sim", "stage", "launch"):
        text = stagelearn_cli(sub, "--help", timeout=60).stdout
        assert "the run YAML" in text, sub  # the positional config is explained
        assert "``" not in text
    for sub in ("sim", "stage"):
        assert "mpiexec -n N" in stagelearn_cli(sub, "--help", timeout=60).stdout
