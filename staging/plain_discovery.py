"""Which variables of an unchanged code's step staging reads in transit, which it skips and why.

:func:`plain_discovery` decides per step from ``IO.AvailableVariables()``: floating-point arrays
are read (every one on the stream, whenever it first appears, or those of ``staging.variables``);
integer and other arrays are skipped with the reason, which staging logs once and lists in
``staging_summary.json`` (``skipped_variables``): staging codes float32, and an integer array
stored as float32 would not come back exact. ``CODE_STEP_NAMES`` are the scalars taken as the
code's own step number.
"""

from __future__ import annotations

#: Scalar variables taken as the code's own step number, when the code writes one (first found).
CODE_STEP_NAMES = ("step", "timestep", "time_step", "iteration", "cycle")


def plain_discovery(available, listed=None):
    """Which arrays of an unchanged code's step are read, and which are skipped (with the reason).

    Parameters
    ----------
    available : dict
        ``IO.AvailableVariables()`` of the step.
    listed : list of str or None
        ``staging.variables`` (None: every floating-point array of more than one value).

    Returns
    -------
    read : list of str
    skipped : dict of str to str
        Variable -> reason (integer and other non-float arrays; scalars only when listed).
    """
    read, skipped = [], {}
    names = listed if listed is not None else sorted(available)
    for name in names:
        info = available.get(name)
        if info is None:
            continue
        kind = info.get("Type")
        if info.get("SingleValue") == "true":  # a scalar: nothing to tile (listed ones are named)
            if listed is not None:
                skipped[name] = "a single value (scalar), not an array: stored only as code_step when it is the step"
            continue
        if kind in ("float", "double"):
            read.append(name)
        elif kind in ("int8_t", "int16_t", "int32_t", "int64_t", "uint8_t", "uint16_t", "uint32_t", "uint64_t", "char"):
            skipped[name] = (f"{kind} array: integers are not stored in transit (staging codes float32; "
                             "write it as a float array if rounding is acceptable)")
        else:
            skipped[name] = f"ADIOS2 type {kind}: not a numeric array"
    return read, skipped
