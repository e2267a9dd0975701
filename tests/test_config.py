"""Run YAML validation: unknown keys, wrong types and missing IOs give exit code 2 and one clear line."""

import json

import pytest
import yaml

from stagelearn.staging.config import load_config
from stagelearn.staging.errors import ConfigError
from conftest import REPO

EXAMPLE = REPO / "examples" / "gray_scott.yaml"


def write(tmp_path, data, name="run.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def example():
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_is_valid():
    cfg = load_config(EXAMPLE)
    assert cfg.simulation.type == "gray_scott" and cfg.simulation.ranks == 4 and cfg.staging.ranks == 2
    assert cfg.adios2.config_file.endswith("xml_configs/stagelearn.xml")


def test_defaults_use_packaged_xml(tmp_path):
    cfg = load_config(write(tmp_path, {"run_name": "x"}))
    assert cfg.adios2.config_file.endswith("stagelearn.xml")


@pytest.mark.parametrize("mutate, key, words", [
    (lambda d: d["learner"].update(publish_evry=3), "learner.publish_evry", "Extra inputs"),
    (lambda d: d["simulation"].update(L="big"), "simulation.L", "valid integer"),
    (lambda d: d["codec"].update(raw_fraction=2), "codec.raw_fraction", "less than or equal"),
    (lambda d: d["simulation"].update(type="lattice_boltzmann"), "simulation", "tag"),
    (lambda d: d.update(timeouts={"open_s": -1}), "timeouts.open_s", "greater than"),
    (lambda d: d["learner"].update(algorithm="warm_ritz"), "learner", "n_components is required"),
    (lambda d: d["learner"].update(algorithm="power"), "learner.algorithm", "Input should be"),
])
def test_bad_values_name_file_and_key(tmp_path, mutate, key, words):
    data = example()
    data["adios2"]["config_file"] = str(REPO / "xml_configs" / "stagelearn.xml")
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and words in msg and "\n" not in msg


def test_missing_io_in_xml(tmp_path):
    data = example()
    data["adios2"] = {"config_file": str(REPO / "xml_configs" / "stagelearn.xml"), "model_io": "Weights"}
    with pytest.raises(ConfigError, match=r"adios2.model_io: IO 'Weights' is not defined in .*stagelearn.xml"):
        load_config(write(tmp_path, data))


def test_malformed_yaml_and_xml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulation: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: invalid YAML"):
        load_config(bad)
    xml = tmp_path / "broken.xml"
    xml.write_text("<adios-config><io name='x'>\n</adios-config>")
    with pytest.raises(ConfigError, match=r"broken.xml:2:\d+: malformed ADIOS2 XML"):
        load_config(write(tmp_path, {"adios2": {"config_file": str(xml)}}))


def test_validate_cli_exit_codes(tmp_path, stagelearn_cli):
    ok = stagelearn_cli("validate", EXAMPLE, timeout=60)
    assert ok.returncode == 0 and "OK" in ok.stdout
    data = example()
    data["staging"]["rankz"] = 3
    bad = stagelearn_cli("validate", write(tmp_path, data), timeout=60)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "staging.rankz" in lines[0] and "run.yaml" in lines[0]
    missing = stagelearn_cli("validate", tmp_path / "nope.yaml", timeout=60)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_random_yaml_documents_only_raise_config_errors(tmp_path):
    """Fuzzed documents (hypothesis): the loader never raises anything but a clean ConfigError."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=8))
    keys = st.sampled_from(["run_name", "simulation", "staging", "adios2", "learner", "codec", "anomaly", "timeouts",
                            "metrics", "type", "ranks", "L", "events", "tile_shape", "variables", "algorithm", "x"])
    docs = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(keys, c, max_size=4)),
                        max_leaves=12)
    path = tmp_path / "fuzz.yaml"

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(docs)
    def check(doc):
        path.write_text(yaml.safe_dump(doc))
        try:
            load_config(path)
        except ConfigError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)

    check()
    assert hypothesis is not None


def test_external_command_resolves_only_script_and_config_files(tmp_path):
    """Scripts and config files next to the YAML become absolute; the stream name, numbers and other
    arguments stay as written (the code runs in the run directory)."""
    from stagelearn.staging.config import load_config

    for name in ("writer.py", "adios2.xml", "sim.bp", "14"):
        (tmp_path / name).write_text("")
    path = tmp_path / "run.yaml"
    path.write_text("simulation: {type: external, ranks: 2, command: [python, writer.py, adios2.xml, sim.bp, '14', '.']}\n"
                    "staging: {mode: in_transit, stream: sim.bp}\n")
    cmd = load_config(path).simulation.command
    assert cmd == ["python", str(tmp_path / "writer.py"), str(tmp_path / "adios2.xml"), "sim.bp", "14", "."]


def test_restart_from_is_checked_before_anything_starts(tmp_path):
    """staging.restart_from: a missing, unreadable or mismatched checkpoint is a config error (exit 2 at
    `validate`), not a failure after the streams are open."""
    from stagelearn.staging.config import load_config
    from stagelearn.staging.errors import ConfigError

    ckpt = tmp_path / "ckpt"
    path = tmp_path / "run.yaml"
    path.write_text("staging: {restart_from: ckpt}\ncodec: {kind: learned}\n")  # stream runs: test_stream_restart.py
    with pytest.raises(ConfigError, match="restart_from: .*holds no checkpoint"):
        load_config(path)
    ckpt.mkdir()
    (ckpt / "learner.npz").write_bytes(b"")
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(ConfigError, match="state.json is unreadable"):
        load_config(path)
    (ckpt / "state.json").write_text(json.dumps({"format": "stagelearn.checkpoint/2", "learners": {"U": {"kind": "pca"}}}))
    assert load_config(path).staging.restart_from == str(ckpt)
    path.write_text("staging: {restart_from: ckpt}\ncodec: {kind: learned}\nlearner: {type: autoencoder}\n")
    with pytest.raises(ConfigError, match="holds a \\['pca'\\] learner"):
        load_config(path)
    path.write_text("staging: {restart_from: ckpt}\ncodec: {kind: learned}\nlearner: {algorithm: oja, n_components: 4}\n")
    with pytest.raises(ConfigError, match="not checkpointed"):
        load_config(path)


def test_every_validation_error_is_listed(tmp_path, stagelearn_cli):
    """Every invalid key of the file is reported (not only the first), each naming the file and the key;
    the message stays one line, `validate` prints one line per problem."""
    data = example()
    data["adios2"]["config_file"] = str(REPO / "xml_configs" / "stagelearn.xml")
    data["simulation"]["L"] = "big"
    data["learner"]["publish_evry"] = 3
    data["timeouts"] = {"open_s": -1}
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    exc = err.value
    keys = ["simulation.L", "learner.publish_evry", "timeouts.open_s"]
    assert len(exc.problems) == 3 and "\n" not in str(exc) and f"{path}: 3 errors" in str(exc)
    for key, words, problem in zip(keys, ["valid integer", "Extra inputs", "greater than"], exc.problems):
        assert problem.startswith(f"{path}: {key}: ") and words in problem
        assert problem in str(exc)
    proc = stagelearn_cli("validate", path, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 3
    assert all(str(path) in line and key in line for key, line in zip(keys, lines))


def test_every_missing_io_is_listed(tmp_path):
    data = example()
    data["adios2"] = {"config_file": str(REPO / "xml_configs" / "stagelearn.xml"), "model_io": "Weights",
                      "output_io": "Out"}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert [p.split(": ")[1] for p in err.value.problems] == ["adios2.model_io", "adios2.output_io"]


def test_config_is_frozen(tmp_path):
    """A loaded configuration is a value: sections cannot be changed in place, copies can."""
    from pydantic import ValidationError

    cfg = load_config(EXAMPLE)
    for section, key, value in ((cfg, "run_name", "x"), (cfg.adios2, "queue_limit", 8), (cfg.learner, "type", "pca"),
                                (cfg.simulation, "ranks", 2), (cfg.codec, "psnr_db", 30.0)):
        with pytest.raises(ValidationError, match="frozen"):
            setattr(section, key, value)
    other = cfg.model_copy(update={"run_name": "other"})
    assert other.run_dir.name == "other" and cfg.run_name != "other" and other.source == cfg.source


def test_stream_queue_defaults_live_in_wire(tmp_path):
    """Neither the YAML nor the XML sets the stream's queue: wire.SST_QUEUE_DEFAULTS applies, and the
    generated XML says the same."""
    from stagelearn.staging.wire import SST_QUEUE_DEFAULTS
    from stagelearn.staging.xmlgen import DEFAULTS

    xml = tmp_path / "plain.xml"
    xml.write_text('<?xml version="1.0"?>\n<adios-config>\n'
                   + "".join(f'  <io name="{n}"><engine type="{e}"/></io>\n' for n, e in
                             (("SimulationOutput", "SST"), ("ModelUpdates", "SST"), ("CompressedOutput", "BP5")))
                   + "</adios-config>\n")
    cfg = load_config(write(tmp_path, {"adios2": {"config_file": str(xml)}}))
    assert (cfg.adios2.queue_limit, cfg.adios2.queue_full_policy) == (SST_QUEUE_DEFAULTS["QueueLimit"],
                                                                      SST_QUEUE_DEFAULTS["QueueFullPolicy"])
    stream = DEFAULTS["stream"][1]
    assert {k: stream[k] for k in SST_QUEUE_DEFAULTS} == {k: str(v) for k, v in SST_QUEUE_DEFAULTS.items()}


@pytest.mark.parametrize("yaml_text, keys", [
    ("codec: {raw_fraction: 0.02}\n", ["codec.raw_fraction"]),
    ("codec: {zstd_level: 9, encode_threads: 2}\n", ["codec.zstd_level", "codec.encode_threads"]),
    ("learner: {type: autoencoder}\n", ["learner.type autoencoder"]),
    ("learner: {algorithm: oja, n_components: 4}\n", ["learner.algorithm", "learner.n_components"]),
    ("anomaly: {enabled: true}\n", ["anomaly.enabled"]),
    ("learner: {replay: {kind: fifo}}\ncodec: {kind: stream}\n", ["learner.replay"]),
])
def test_stream_codec_refuses_learned_codec_keys(tmp_path, yaml_text, keys):
    """The default codec is the stream codec; keys that only the learned tile codec reads are refused
    (they would be ignored silently), naming each key and the fix; with codec.kind learned they load."""
    from stagelearn.staging.config import load_config
    from stagelearn.staging.errors import ConfigError

    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert all(k in msg for k in keys) and "codec.kind: learned" in msg and str(path) in msg, msg
    if "kind: stream" not in yaml_text:
        path.write_text(yaml_text + "codec: {kind: learned}\n" if "codec:" not in yaml_text
                        else yaml_text.replace("codec: {", "codec: {kind: learned, "))
        assert load_config(path).codec.kind == "learned"


def test_default_codec_is_stream_and_examples_load():
    """`make demo`'s YAML and a bare YAML use the stream codec; the autoencoder example keeps the tile codec."""
    from stagelearn.staging.config import RunConfig, load_config

    assert RunConfig().codec.kind == "stream"
    assert load_config(REPO / "examples" / "gray_scott.yaml").codec.kind == "stream"
    assert load_config(REPO / "examples" / "gray_scott_ae.yaml").codec.kind == "learned"
    for name in ("heat2d.yaml", "intransit/gray_scott.yaml", "pde_hook/run.yaml"):
        assert load_config(REPO / "examples" / name).codec.kind == "stream", name


def test_qoi_raw_fraction_needs_the_learned_codec(tmp_path):
    """qoi.raw_fraction sends raw tiles of f: the stream codec has none, so it is refused naming the key."""
    from stagelearn.staging.config import load_config
    from stagelearn.staging.errors import ConfigError

    path = tmp_path / "run.yaml"
    path.write_text("simulation: {type: gyrokinetic, ranks: 2}\nqoi: {variable: f, raw_fraction: 0.01, "
                    "moments: [{name: density, tolerance: 1.0e-2}]}\n")
    with pytest.raises(ConfigError, match="qoi.raw_fraction 0.01 .*codec.kind: learned"):
        load_config(path)
    path.write_text(path.read_text() + "codec: {kind: learned}\n")
    assert load_config(path).qoi.raw_fraction == 0.01
