"""What ``stagelearn decode FILE`` prints without ``--step``/``--var``: the file's fields, steps and
the code's own ADIOS2 attributes carried in transit (:meth:`CompressedOutputReader.attributes`)."""

from __future__ import annotations

import json

import numpy as np


def format_attribute(value):
    """One attribute value as text: strings JSON-quoted, numbers with their dtype.

    Examples: ``"K"``, ``["a", "bb"]``, ``0.25 (float64)``, ``[4, 4] (int32)``.
    """
    if isinstance(value, (str, list)):
        return json.dumps(value)
    arr = np.asarray(value)
    return f"{json.dumps(arr.tolist())} ({arr.dtype})"


def describe_output(path, reader):
    """The listing of a compressed output file.

    Parameters
    ----------
    path : str
        As the user gave it (for the first line).
    reader : CompressedOutputReader

    Returns
    -------
    str
        ``<path>: variables [...], steps a..b (n)``, then, when the file holds any, one line per
        attribute of the code: ``  <name> = <value>``.
    """
    steps = reader.steps
    span = f"steps {steps[0]}..{steps[-1]} ({len(steps)})" if steps else "no steps stored"
    lines = [f"{path}: variables {reader.fields()}, {span}"]
    attrs = reader.attributes()
    if attrs:
        lines.append(f"attributes of the code ({len(attrs)}):")
        lines.extend(f"  {name} = {format_attribute(value)}" for name, value in attrs.items())
    return "\n".join(lines)
