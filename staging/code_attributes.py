"""The code's own ADIOS2 attributes in transit: read from its stream, carried into ``compressed.bp``.

An unchanged ADIOS2 code may describe its output with attributes: global ones (``title``, a time
step ``dt``) and variable ones (``T/unit``: ADIOS2 names a variable's attribute
``<variable>/<name>``), strings or numbers, single values or arrays, defined before the first step
or at any later one. After each step staging rank 0 reads the attributes of the stream's IO
(:func:`stream_attributes`), and the output writer defines the new or changed ones in the same
output step as ``code/<name>`` (:func:`~.output_format.code_attribute_name`,
:meth:`~.output_writer.CompressedOutputWriter.write_step`). :func:`read_attributes` reads them
back from either IO (``CompressedOutputReader.attributes``, ``stagelearn decode``).

Types: strings, string arrays and numeric arrays keep their ADIOS2 type and values; a numeric
single value keeps its type when it is float64 or int64 (the only single-value numeric types the
ADIOS2 Python bindings can define) and is otherwise stored as a one-element array of its own
type. An attribute whose value changes is stored with its last value.

What ADIOS2 2.12.1's SST hands the reader is what can be carried: with its default
``MarshalMethod`` (BP5) a string-array attribute arrives as one empty string (ADIOS2 issue 3453),
with ``FFS`` numeric attributes do not arrive at all, and with ``BP`` a one-element numeric array
arrives as a single value. Staging stores what arrived and warns
about empty strings (:func:`suspected_loss`); ``MarshalMethod=BP`` in the code's XML carries every
attribute.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def read_attributes(io, prefix=""):
    """The attributes of an ADIOS2 ``io`` whose names start with ``prefix``, prefix removed.

    Parameters
    ----------
    io : adios2.bindings.IO
        A reader's IO after ``BeginStep`` (stream) or ``Open`` (file).
    prefix : str, default=""
        Only names starting with it; it is removed from the keys.

    Returns
    -------
    dict of str to value
        ``str`` (a single string), ``list of str`` (a string array), a numpy scalar (a numeric
        single value) or a 1-D ndarray (a numeric array), in ADIOS2's order of names.
    """
    out = {}
    for name in sorted(io.AvailableAttributes()):
        if not name.startswith(prefix):
            continue
        attr = io.InquireAttribute(name)
        if attr.Type() == "string":
            data = list(attr.DataString())
            value = data[0] if attr.SingleValue() and data else data
        else:
            arr = np.array(attr.Data()).ravel()
            value = arr[0] if attr.SingleValue() and arr.size == 1 else arr
        out[name[len(prefix):]] = value
    return out


def stream_attributes(reader):
    """The code's attributes on an in-transit stream (``reader.io``), or None for other readers.

    Parameters
    ----------
    reader : stream reader
        A :class:`~.stream.PlainStreamReader` (in transit) after ``read_step``; other readers (in
        situ, test fakes) carry no attributes of a code.
    """
    from .plain_stream import PlainStreamReader

    if not isinstance(reader, PlainStreamReader):
        return None
    return read_attributes(reader.io)


def same_value(a, b):
    """Whether two attribute values (as :func:`read_attributes` returns them) are the same, type included."""
    if isinstance(a, (str, list)) or isinstance(b, (str, list)):
        return type(a) is type(b) and a == b
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def suspected_loss(name, value):
    """The warning for an attribute that SST may have emptied (an empty single string), else None."""
    if not (isinstance(value, str) and value == ""):
        return None
    return (f"the code's attribute {name!r} arrived as an empty string: ADIOS2's SST with MarshalMethod BP5 (its "
            "default) or FFS delivers string-array attributes as one empty string (ADIOS2 issue 3453); if the code "
            "writes a string array there, add <parameter key=\"MarshalMethod\" value=\"BP\"/> to the SST engine of "
            "its stream IO in its XML")


def define_attribute(io, name, value):
    """Define (or redefine, with a new value) the attribute ``name`` of a writer's ``io``.

    Parameters
    ----------
    io : adios2.bindings.IO
    name : str
    value : str, list of str, numpy scalar or ndarray
        As :func:`read_attributes` returns it.

    Raises
    ------
    ValueError
        If ADIOS2 cannot define an attribute of this type (the message names the attribute).
    """
    if io.InquireAttribute(name) is not None:
        io.RemoveAttribute(name)
    if isinstance(value, str):
        io.DefineAttribute(name, value)
        return
    if isinstance(value, list):
        io.DefineAttribute(name, [str(v) for v in value])
        return
    arr = np.asarray(value)
    if arr.dtype.kind not in "iufc":
        raise ValueError(f"attribute {name!r}: type {arr.dtype} is not an ADIOS2 attribute type")
    try:
        if arr.ndim == 0 and arr.dtype == np.float64:
            io.DefineAttribute(name, float(arr))
        elif arr.ndim == 0 and arr.dtype == np.int64:
            io.DefineAttribute(name, int(arr))
        else:
            io.DefineAttribute(name, np.ascontiguousarray(arr.reshape(-1)))
    except Exception as exc:  # ADIOS2 raises plain runtime errors
        raise ValueError(f"attribute {name!r} ({arr.dtype}, {arr.size} values): ADIOS2 cannot define it "
                         f"({exc})") from None
