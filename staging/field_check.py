"""What a producer accepts as a step's fields: defined names, block shapes, real numeric dtypes.

:func:`check_fields` runs on each rank without communication and returns the error (naming the
step, the rank, the variable and the fix) instead of raising, so that all ranks can agree first
(:func:`stagelearn.staging.mpiutil.raise_first_error`) and no rank is left in a collective.
"""

from __future__ import annotations

import logging

import numpy as np

from .wire import WIRE_DTYPE

logger = logging.getLogger(__name__)


def check_fields(step, rank, variables, fields):
    """Check this rank's ``fields`` for ``step`` (local, no communication).

    Parameters
    ----------
    step, rank : int
    variables : dict of str to tuple
        The defined fields: name -> ``(shape, start, count)``.
    fields : dict of str to ndarray or None
        What the simulation passed to ``write``.

    Returns
    -------
    error : str or None
        What is wrong, naming the step, this rank, the variable and the fix.
    given : dict of str to ndarray
        Each defined variable's block as passed; an empty block (``(0,) + count[1:]``) where this
        rank has none this step (None, or the name left out).
    blocks : dict of str to ndarray
        The same as C-ordered float32 copies: what travels, and what is kept for replay (a copy,
        so the simulation may reuse its arrays once ``write`` returns).
    """
    where = f"step {step}, producer rank {rank}"
    unknown = sorted(set(fields) - set(variables))
    if unknown:
        return (f"{where}: undefined variables {unknown} (defined: {sorted(variables)}); call define_variable "
                "for every variable before open()"), {}, {}
    given, blocks, absent = {}, {}, []
    for name, (_, _, count) in variables.items():
        if fields.get(name) is None:
            absent.append(name)
            arr = np.zeros((0,) + count[1:], dtype=WIRE_DTYPE)
        else:
            arr = np.asarray(fields[name])
            if arr.dtype.kind == "c":
                return (f"{where}: variable {name} is complex ({arr.dtype}); only real values can be streamed: "
                        "write the real and imaginary parts as two variables"), {}, {}
            if arr.dtype.kind not in "fiu":
                return (f"{where}: variable {name} has dtype {arr.dtype}; pass a real numeric array (floating "
                        "point or integer, sent as float32)"), {}, {}
            if arr.shape != count:
                return (f"{where}: variable {name} has block shape {arr.shape}, expected {count} (the count given "
                        "to define_variable, fixed for the whole run; pass None for a step without a block)"), {}, {}
        given[name] = arr
        blocks[name] = np.array(arr, dtype=WIRE_DTYPE, order="C")
    if absent:
        logger.info("%s: no block of %s (None or left out): sending an empty block", where, absent)
    return None, given, blocks


def check_selection(name, shape, start, count):
    """Check a field's name and its selection; return ``(shape, start, count)`` as tuples of int.

    Raises
    ------
    ValueError
        If the name is empty or contains ``/``, or the selection is negative or lies outside the shape.
    """
    if "/" in name or not name:
        raise ValueError(f"variable name {name!r} must be non-empty and must not contain '/'")
    shape, start, count = (tuple(int(x) for x in v) for v in (shape, start, count))
    if not (len(shape) == len(start) == len(count)) or any(s < 0 or c < 0 or s + c > n
                                                             for s, c, n in zip(start, count, shape)):
        raise ValueError(f"variable {name}: start {start} + count {count} does not fit in shape {shape}")
    return shape, start, count
