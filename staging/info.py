"""``stagelearn info``: the versions of what a run depends on, and whether ADIOS2 has MPI."""

from __future__ import annotations

import platform

import numpy

from .errors import StagelearnError


def versions():
    """Lines naming stagelearn, Python, numpy, mpi4py (and its MPI library), ADIOS2 and torch.

    Returns
    -------
    list of str
        One line per component; a component that cannot be imported says why.
    """
    from stagelearn import __version__

    lines = [f"stagelearn {__version__}", f"python {platform.python_version()}", f"numpy {numpy.__version__}"]
    try:
        from mpi4py import MPI

        import mpi4py

        lines.append(f"mpi4py {mpi4py.__version__}; {MPI.Get_library_version().splitlines()[0]}")
    except ImportError as exc:
        lines.append(f"mpi4py: not available ({exc})")
    try:
        from .adios import adios2_version, built_with_mpi

        lines.append(f"adios2 {adios2_version()}; built with MPI: {built_with_mpi()}")
    except (ImportError, StagelearnError) as exc:
        lines.append(f"adios2: not available ({exc})")
    try:
        import torch

        lines.append(f"torch {torch.__version__}; gloo: {torch.distributed.is_gloo_available()}")
    except ImportError:
        lines.append("torch: not installed")
    return lines
