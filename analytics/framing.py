"""Self-describing byte frames: a magic, a JSON header and named binary sections.

Layout (little-endian): ``magic (4 bytes) | uint32 header_len | UTF-8 JSON header | sections``;
the header maps each section name to ``[offset, nbytes]`` within the sections area. Used for
block payloads and for bundles moved between ranks, so no pickle crosses a process boundary.
"""

from __future__ import annotations

import json
import struct

import numpy as np


def pack_frame(magic, header, sections):
    """Serialise a JSON header and named byte sections into one ``bytes`` object.

    Parameters
    ----------
    magic : bytes of length 4
    header : dict
        JSON-serialisable; must not contain the key ``"sections"``.
    sections : dict of str to bytes-like

    Returns
    -------
    frame : bytes
    """
    offsets, blobs, pos = {}, [], 0
    for name, blob in sections.items():
        blob = bytes(blob)
        offsets[name] = [pos, len(blob)]
        blobs.append(blob)
        pos += len(blob)
    head = json.dumps(dict(header, sections=offsets), separators=(",", ":")).encode()
    return magic + struct.pack("<I", len(head)) + head + b"".join(blobs)


def unpack_frame(magic, frame, what="frame"):
    """Inverse of :func:`pack_frame`.

    Parameters
    ----------
    magic : bytes of length 4
    frame : bytes or ndarray of uint8
    what : str
        Name used in error messages.

    Returns
    -------
    header : dict
    sections : dict of str to memoryview

    Raises
    ------
    ValueError
        If the magic differs, the header is not JSON, or a section lies outside the frame.
    """
    if isinstance(frame, np.ndarray):
        frame = np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    buf = memoryview(frame)
    if len(buf) < 8 or bytes(buf[:4]) != magic:
        raise ValueError(f"not a stagelearn {what} (expected magic {magic!r}); was it written by another program?")
    (hlen,) = struct.unpack("<I", bytes(buf[4:8]))
    if 8 + hlen > len(buf):
        raise ValueError(f"{what} header of {hlen} bytes runs past the end ({len(buf)} bytes)")
    try:
        header = json.loads(bytes(buf[8:8 + hlen]).decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{what} header is not valid JSON: {exc!r}") from None
    if not isinstance(header, dict) or not isinstance(header.get("sections", {}), dict):
        raise ValueError(f"{what} header must be a JSON object with a 'sections' object")
    body = buf[8 + hlen:]
    sections = {}
    for name, entry in header.pop("sections", {}).items():
        if not (isinstance(entry, list) and len(entry) == 2 and all(type(x) is int for x in entry)):
            raise ValueError(f"{what} section {name!r}: expected [offset, length], got {entry!r}")
        off, n = entry
        if off < 0 or n < 0 or off + n > len(body):
            raise ValueError(f"{what} section {name!r} lies outside the {what}")
        sections[name] = body[off:off + n]
    return header, sections
