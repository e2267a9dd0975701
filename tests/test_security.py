"""Security: crafted model updates are rejected, contact files stay private, no shell strings, no pickle."""

from __future__ import annotations

import ast
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import child_env
from stagelearn.analytics import IncrementalPCA
from stagelearn.analytics.encoder import Encoder, spec_to_bytes
from stagelearn.analytics.tiling import to_tiles

REPO = Path(__file__).resolve().parents[1]
XML = REPO / "xml_configs" / "stagelearn.xml"
TILE = (4, 4, 4)

# Writes one SST step per case on the ModelUpdates IO, in ModelPublisher's format (model/spec, model/version,
# model/trained_until_step, model/<var>/<array>) but tampered, then the good encoder. The wrong-dtype steps
# use their own variable names (V, W): an SST reader keeps the type a name had in its first step.
WRITER = """\
import json, sys
import numpy as np
from stagelearn.staging.adios import bindings, make_adios

xml, stream, spec_path, arrays_path = sys.argv[1:]
spec = json.loads(open(spec_path).read())
with np.load(arrays_path, allow_pickle=False) as z:
    good = {k: z[k] for k in z.files}
b = bindings()
adios = make_adios(xml, None)  # keep a reference: the IO lives in it
io = adios.DeclareIO("ModelUpdates")
io.SetParameter("QueueFullPolicy", "Block")  # every crafted step must reach the reader, none discarded
engine = io.Open(stream, b.Mode.Write)
defined = {}

def step(spec, arrays):
    engine.BeginStep()
    named = {"model/spec": np.frombuffer(json.dumps(spec).encode(), dtype=np.uint8).copy(),
             "model/version": np.array([spec["version"]], dtype=np.int64),
             "model/trained_until_step": np.array([spec["trained_until_step"]], dtype=np.int64)}
    named.update(arrays)
    for name, arr in named.items():
        shape = list(arr.shape)
        if name not in defined:
            defined[name] = io.DefineVariable(name, arr, shape, [0] * arr.ndim, shape)
        var = defined[name]
        var.SetShape(shape)
        var.SetSelection([[0] * arr.ndim, shape])
        engine.Put(var, arr, b.Mode.Sync)
    engine.EndStep()

def renamed(var, mean, comps):
    return (dict(spec, variables={var: spec["variables"]["U"]}),
            {f"model/{var}/mean_": mean, f"model/{var}/components_": comps})

mean, comps = good["model/U/mean_"], good["model/U/components_"]
step(spec, {**good, "exec/payload": np.ones(4, dtype=np.float32)})           # unexpected variable
step(spec, {**good, "model/U/components_": np.ascontiguousarray(comps[:-1])})  # wrong shape
step(*renamed("V", mean.astype(np.float64), comps))                           # wrong dtype (double)
step(*renamed("W", mean, comps.astype(np.int32)))                             # wrong dtype (int32)
step(dict(spec, exec="import os"), good)                                       # spec with an unknown key
step(spec, good)                                                               # the real one
engine.Close()
"""


def _encoder():
    rng = np.random.default_rng(7)
    x = np.cumsum(rng.standard_normal((16, 16, 16)), axis=0).astype(np.float32)
    est = IncrementalPCA(8).partial_fit(to_tiles(x, TILE))
    return Encoder.from_learners({"U": est}, version=1, trained_until_step=5, tile_shapes={"U": TILE},
                                 ranges={"U": (float(x.min()), float(x.max()))}, psnr_db=40.0, raw_fraction=0.01)


@pytest.mark.sst
@pytest.mark.timeout(120)
def test_crafted_model_stream_is_rejected(tmp_path, caplog):
    from stagelearn.staging.adios import declare_io, make_adios
    from stagelearn.staging.model_channel import ModelSubscriber
    from stagelearn.staging.xmlconfig import read_ios

    enc = _encoder()
    (tmp_path / "spec.json").write_bytes(spec_to_bytes(enc.spec()).tobytes())
    np.savez(tmp_path / "arrays.npz", **{f"model/{k}": v for k, v in enc.arrays().items()})
    (tmp_path / "writer.py").write_text(WRITER)
    stream = str(tmp_path / "model")
    writer = subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(XML), stream, str(tmp_path / "spec.json"),
                               str(tmp_path / "arrays.npz")], cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    got, sub = [], None
    try:
        adios = make_adios(str(XML), None)  # keep a reference: the IO lives in it
        io = declare_io(adios, "ModelUpdates", str(XML), read_ios(XML))
        with caplog.at_level(logging.ERROR, logger="stagelearn.staging.model_channel"):
            sub = ModelSubscriber(io, stream, open_timeout_s=30)
            deadline = time.monotonic() + 60
            while not sub.ended and time.monotonic() < deadline:
                enc_got = sub.poll()
                if enc_got is not None:
                    got.append(enc_got)
                time.sleep(0.05)
    finally:
        if sub is not None:
            sub.close()
        try:
            _, err = writer.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
            _, err = writer.communicate()
    assert writer.returncode == 0, err[-3000:]
    assert sub.ended and not getattr(sub, "failed", False), "the writer's stream did not end cleanly"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 5, errors
    assert "unexpected variable 'exec/payload'" in errors[0]
    assert "U/components_: got float32[7, 64], spec says float32[8, 64]" in errors[1]
    assert "'model/V/mean_' has type double, expected float" in errors[2]
    assert "'model/W/components_' has type int32_t, expected float" in errors[3]
    assert "encoder spec has unknown keys ['exec']" in errors[4]
    assert all("keeping encoder version 0" in e for e in errors)
    assert len(got) == 1 and (got[0].version, got[0].trained_until_step) == (1, 5)
    np.testing.assert_array_equal(got[0].variables["U"].components_, enc.variables["U"].components_)
    np.testing.assert_array_equal(got[0].variables["U"].mean_, enc.variables["U"].mean_)


@pytest.mark.parametrize("existing", [None, 0o755, 0o777])
def test_prepare_run_dir_makes_sst_private(tmp_path, existing):
    from stagelearn.staging.sides import prepare_run_dir

    run_dir = tmp_path / "run"
    if existing is not None:
        (run_dir / "sst").mkdir(parents=True)
        os.chmod(run_dir / "sst", existing)
    sst = prepare_run_dir(str(run_dir))
    assert Path(sst) == run_dir / "sst"
    assert stat.S_IMODE(os.stat(sst).st_mode) == 0o700


SHELL_SCAN = ("staging", "analytics", "sim_mocks", "examples", "benchmarks")
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput")}


def _sources(folders):
    files = sorted(p for d in folders for p in (REPO / d).rglob("*.py"))
    assert len(files) > 20, files
    return [(p, ast.parse(p.read_text(encoding="utf-8"), filename=str(p))) for p in files]


def _dotted(node):
    """``a.b.c`` of a Name/Attribute chain, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id] + parts[::-1])
    return ""


def test_no_shell_strings():
    bad = []
    for path, tree in _sources(SHELL_SCAN):
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        bad.append(f"{where}:{node.lineno}: shell={ast.unparse(kw.value)}")
                name = _dotted(node.func)
                if tuple(name.split(".")[-2:]) in SHELL_CALLS:
                    bad.append(f"{where}:{node.lineno}: {name}()")
            elif isinstance(node, ast.ImportFrom) and node.module in ("os", "subprocess"):
                for alias in node.names:
                    if (node.module, alias.name) in SHELL_CALLS:
                        bad.append(f"{where}:{node.lineno}: from {node.module} import {alias.name}")
    assert bad == [], "shell strings (use subprocess with an argument list):\n" + "\n".join(bad)


def test_no_pickle_or_torch_load():
    bad = []
    for path, tree in _sources(("staging", "analytics")):
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bad += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                        if a.name.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle")]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if mod.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle") or \
                        (mod == "torch" and any(a.name == "load" for a in node.names)):
                    bad.append(f"{where}:{node.lineno}: from {mod} import ...")
            elif isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name in ("torch.load", "pickle.load", "pickle.loads") or name.endswith(".Unpickler"):
                    bad.append(f"{where}:{node.lineno}: {name}()")
                for kw in node.keywords:  # np.load(..., allow_pickle=True) unpickles object arrays
                    if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        bad.append(f"{where}:{node.lineno}: allow_pickle={ast.unparse(kw.value)}")
    assert bad == [], "model weights travel as named arrays, never pickled:\n" + "\n".join(bad)
