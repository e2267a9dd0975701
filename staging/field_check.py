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

#: Integers of magnitude up to this are exact in float32 (the wire dtype); beyond it, not all are.
FLOAT32_EXACT_INT = 2 ** 24


def largest_inexact(given, block):
    """The largest magnitude among the caller's values that the wire block does not hold exactly.

    Compared in the caller's own dtype (an integer is exact only if it comes back bit for bit).

    Parameters
    ----------
    given : ndarray
        The caller's values (any real dtype).
    block : ndarray of float32
        The same values as they travel.

    Returns
    -------
    value : int or float or None
        None when every value is exact (NaN counts as exact where the block holds NaN).
    """
    if given.dtype == block.dtype or given.size == 0:
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        back = block.astype(given.dtype)
    same = back == given
    if given.dtype.kind == "f":
        same |= np.isnan(given) & np.isnan(block)
    if same.all():
        return None
    bad = given[~same]
    if given.dtype.kind in "iu":
        return max(abs(int(bad.min())), abs(int(bad.max())))
    return float(np.max(np.abs(bad)))


def check_fields(step, rank, variables, fields, warned=None):
    """Check this rank's ``fields`` for ``step`` (local, no communication).

    Parameters
    ----------
    step, rank : int
    variables : dict of str to tuple
        The defined fields: name -> ``(shape, start, count)``.
    fields : dict of str to ndarray or None
        What the simulation passed to ``write``.
    warned : set of str, optional
        Integer variables already warned about values that float32 does not hold exactly
        (updated; each variable is warned about once per set).

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
                        "point or integer, sent as float32: integers exact up to 2**24)"), {}, {}
            if arr.shape != count:
                return (f"{where}: variable {name} has block shape {arr.shape}, expected {count} (the count given "
                        "to define_variable, fixed for the whole run; pass None for a step without a block)"), {}, {}
        given[name] = arr
        blocks[name] = np.array(arr, dtype=WIRE_DTYPE, order="C")
        if arr.dtype.kind in "iu" and (warned is None or name not in warned):
            worst = largest_inexact(arr, blocks[name])
            if worst is not None:
                if warned is not None:
                    warned.add(name)
                logger.warning("%s: variable %s holds integers float32 cannot represent exactly (largest: %d; "
                               "float32 holds every integer only up to 2**24 = %d): they travel rounded to float32, "
                               "and the report counts that error against your %s values; pass values within "
                               "+-2**24, or scale or split the variable", where, name, worst, FLOAT32_EXACT_INT,
                               arr.dtype)
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
