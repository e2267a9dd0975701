"""Shared code of the benchmarks: frame-wise codec runs (benchopt solvers) and `stagelearn run`."""

import json
import os
import subprocess
import sys
import time

import numpy as np


def run_framewise(frames, compress):
    """Apply ``compress(frame) -> (payload, decode)`` to every frame.

    Returns
    -------
    result : dict
        ``reconstruction``, ``n_bytes``, ``compress_s``, ``decompress_s``.
    """
    rec, n_bytes, tc, td = [], 0, 0.0, 0.0
    for frame in frames:
        t0 = time.perf_counter()
        payload, decode = compress(frame)
        t1 = time.perf_counter()
        rec.append(np.asarray(decode(), dtype=np.float32).reshape(frame.shape))
        t2 = time.perf_counter()
        n_bytes += len(payload)
        tc += t1 - t0
        td += t2 - t1
    return dict(reconstruction=np.stack(rec), n_bytes=n_bytes, compress_s=tc, decompress_s=td)


def run_stagelearn(out_dir, name, config):
    """Write ``config`` (a run-YAML dict) as ``<out_dir>/<name>.yaml``, run ``stagelearn run`` on it.

    Returns
    -------
    run_dir : str
        ``<out_dir>/<name>``, holding ``summary.json``, ``steps.json``, ``producer.json``...

    Raises
    ------
    SystemExit
        If the run fails (its stderr tail is shown).
    """
    import yaml

    config = dict(config, run_name=name, output_dir=str(out_dir))
    path = os.path.join(out_dir, f"{name}.yaml")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    proc = subprocess.run([sys.executable, "-m", "stagelearn", "run", path, "--no-progress"], capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode:
        sys.exit(f"{name}: stagelearn run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return os.path.join(out_dir, name)


def read_json(run_dir, name):
    with open(os.path.join(run_dir, name)) as f:
        return json.load(f)


class FramewiseSolver:
    """Mixin for benchopt solvers that compress each frame independently with one codec.

    Subclasses (``class Solver(FramewiseSolver, BaseSolver)``) set ``name``, ``parameters`` and
    ``requirements`` and implement ``compress(frame) -> (payload, decode)``.
    """

    sampling_strategy = "run_once"

    def set_objective(self, frames, blocks):
        self.frames = frames

    def run(self, _):
        self.result = run_framewise(self.frames, self.compress)

    def get_result(self):
        return self.result
