"""What this ADIOS2 build can do: the operators compiled in and SST's data planes, asked once per process.

An ``<operation>`` whose operator is not compiled in makes ADIOS2 throw ``MissingOperatorFailure``
("ADIOS2 didn't compile with zfp library") when the code defines the variable (an uncaught C++
exception: the code aborts), or in the ADIOS constructor for a top-level ``<operator>``. The only
reliable question is ADIOS2's own: :func:`build_facts` runs ``DefineOperator`` for every operator
type ADIOS2 2.12.1 knows (``MakeOperator`` in ``source/adios2/operator/OperatorFactory.cpp``) in a
child Python (so that this process never loads ADIOS2 and a crash there cannot end it), and reads
the data planes from the installed ``SSTConfig.h`` / ``ADIOSConfig.h`` next to it. The answer is
cached for the process.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

#: Operator types of ADIOS2 2.12.1 (OperatorFactory.cpp, matched lower-cased); ``null`` and ``plugin`` are always in.
OPERATOR_TYPES = ("bigwhoop", "blosc", "bzip2", "libpressio", "mgard", "mgardplus", "mgard_complex", "png", "sirius",
                  "sz", "sz3", "zfp", "mdr", "prodm", "plugin", "null")

_MPI_ENV = ("PMI_", "PMIX_", "HYDRA_", "MPIR_", "MPI_LOCAL", "OMPI_")

_PROBE = r"""
import json, sys
try:
    import mpi4py
    mpi4py.rc.initialize = False
    from mpi4py import MPI  # noqa: F401  (loads libmpi before an MPI-enabled adios2)
except Exception:
    pass
import adios2
have = []
adios = adios2.Adios()
for i, name in enumerate(sys.argv[1:]):
    if name == "plugin":
        have.append(name)  # defining it needs a plugin library; the type itself is always compiled in
        continue
    try:
        adios.define_operator(f"stagelearn_probe_{i}", name)
        have.append(name)
    except Exception:
        pass
print(json.dumps({"version": str(adios2.__version__), "file": adios2.__file__, "operators": have}))
"""


@functools.lru_cache(maxsize=None)
def build_facts(timeout=60.0):
    """The ADIOS2 build's version, install prefix, operators and SST data planes.

    Returns
    -------
    facts : dict or None
        ``{"version": str, "prefix": str, "operators": frozenset of str (lower case), "data_planes":
        frozenset or None}``; None when ADIOS2 cannot be asked (not installed, probe failed): checks
        that need it then say so instead of guessing.
    """
    # not a rank of the caller's MPI job (asked from `stagelearn stage` under mpiexec too)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_MPI_ENV)}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, *OPERATOR_TYPES], capture_output=True, text=True,
                              timeout=timeout, env=dict(env, PYTHONWARNINGS="ignore"), stdin=subprocess.DEVNULL)
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    # <prefix>/lib/pythonX.Y/site-packages/adios2/__init__.py
    prefix = os.path.abspath(os.path.join(os.path.dirname(facts["file"]), *[os.pardir] * 4))
    return {"version": facts["version"], "prefix": prefix, "operators": frozenset(facts["operators"]),
            "data_planes": _data_planes(prefix)}


def _defined(header, macro):
    try:
        with open(header, encoding="utf-8") as f:
            return any(line.split()[:2] == ["#define", macro] for line in f)
    except OSError:
        return None


def _data_planes(prefix):
    """SST data planes compiled in (dp/dp.c: evpath always, rdma with libfabric, ucx, mpi with ADIOS2's MPI)."""
    inc = os.path.join(prefix, "include", "adios2")
    sst, cfg = os.path.join(inc, "toolkit", "sst", "SSTConfig.h"), os.path.join(inc, "common", "ADIOSConfig.h")
    flags = {"rdma": _defined(sst, "SST_HAVE_LIBFABRIC"), "ucx": _defined(sst, "SST_HAVE_UCX"),
             "mpi": _defined(cfg, "ADIOS2_HAVE_MPI")}
    if any(v is None for v in flags.values()):
        return None  # headers not installed (a wheel): unknown
    return frozenset(["evpath"] + [k for k, v in flags.items() if v])


def operators_text(facts):
    """``'bzip2, png, ...'``: the operators this build has, for messages."""
    return ", ".join(sorted(facts["operators"])) if facts else "unknown (ADIOS2 could not be asked)"
