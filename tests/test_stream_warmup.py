"""The setup step that compiles the stream codec's kernels (analytics/stream_codec/warmup.py).

``make setup`` runs it so that the ranks of a first run load the kernels from numba's cache
instead of all compiling them at once; here it must run through every path it covers, with every
decoded frame equal to the producer's reconstruction (it raises otherwise).
"""

from __future__ import annotations

import subprocess
import sys

from stagelearn.analytics.stream_codec.warmup import compile_kernels


def test_warmup_codes_and_decodes_every_path():
    assert compile_kernels() > 0.0


def test_warmup_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "stagelearn.analytics.stream_codec.warmup"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "stream codec kernels compiled and cached" in out.stdout
