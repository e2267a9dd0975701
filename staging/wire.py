"""What travels on the simulation -> staging stream: variable names and the per-block report.

Per output step, each producer block writes, for each field variable ``X``:

- ``X`` (global array, float32, shape/start/count of the simulation): the raw block, while no
  encoder is in use;
- ``X/payload`` (local array, uint8): the block's transform-coded payload once an encoder is in
  use (:func:`stagelearn.analytics.codec.encode_block`, self-describing);
- ``X/report`` (local array, float64, :data:`REPORT_FIELDS`): step, rank, encoder version, bytes
  and the error of what was sent against the producer's raw data;
- ``X/anomaly`` (local array, float32) when the encoder carries an anomaly policy: the block's
  anomaly map (its histogram of tile log-residuals travels inside the payload).
- ``X/qoi`` (local array, uint32) when the encoder carries a moment policy (``qoi``) for ``X``:
  the block's moment side information (:func:`stagelearn.analytics.qoi_side.protect`).

Producers write exactly one block per variable, so block ``i`` of ``X/payload`` and of
``X/report`` belong to the same writer rank.
"""

from __future__ import annotations

import numpy as np

from ..sim_mocks.decomposition import balanced_split
from .adios import built_with_mpi

#: Columns of ``X/report`` (also written as the stream attribute ``stagelearn/report_fields``).
#: ``raw_bytes`` is the block's size in the code's own dtype (float64 data: 8 bytes a value), so
#: ratios are against what the code holds; ``4 * n`` is its float32 size (the second figure).
#: ``sz3_bytes``/``sz3_sse``: SZ3 per frame at the PSNR reached (sampled steps, else 0);
#: ``sz3_cl_bytes``/``sz3_cl_sse``/``sz3_cl_setting``: SZ3 in closed loop on the same block at the same
#: PSNR (the blocks :func:`stagelearn.analytics.sz3_closed_loop.follows` picks, every coded step, else 0),
#: and SZ3's PSNR setting on the difference (inf: the block was kept exact);
#: ``encode_s``: seconds the coding rank spent coding the block (SZ3 references excluded, except a
#: per-frame sample's); ``interval_s``: in situ the simulation's compute time before this step on this
#: rank (from the end of its previous ``write`` to this one), in transit the time since the staging
#: rank's previous coded step; given on the coding rank's first coded row of the step only (else 0),
#: so that a sum over rows counts each (step, coding rank) once.
#: ``qoi_bytes``: the block's moment side information (also counted in ``sent_bytes``; 0 without a
#: ``qoi:`` policy); ``qoi_worst``: the largest ``|moment error| / tolerance`` over the block's points
#: and moments after the correction (``<= 1``: every moment within tolerance). Appended last, so rows
#: of older files (fewer columns) read with these as 0.
REPORT_FIELDS = (
    "step", "rank", "encoder_version", "raw_bytes", "sent_bytes", "sse", "n", "max_abs_error",
    "vmin", "vmax", "n_raw_tiles", "sz3_bytes", "sz3_sse", "local_psnr_db", "n_flagged", "anomaly_bytes",
    "sz3_cl_bytes", "sz3_cl_sse", "sz3_cl_setting", "encode_s", "interval_s", "qoi_bytes", "qoi_worst",
)
_COL = {name: i for i, name in enumerate(REPORT_FIELDS)}

WIRE_DTYPE = np.float32  # fields travel (and raw sizes are counted) as float32

#: The data stream's SST queue where neither the run YAML nor the XML sets it: never unbounded.
#: The one place these defaults live (config, producers and the XML generator read them here).
SST_QUEUE_DEFAULTS = {"QueueLimit": 4, "QueueFullPolicy": "Block"}


def payload_name(var):
    return f"{var}/payload"


def report_name(var):
    return f"{var}/report"


def anomaly_name(var):
    """Per-block anomaly map: float32 ``[n, (tile, score, flagged, persistent) * n]``."""
    return f"{var}/anomaly"


def qoi_name(var):
    """Per-block moment side information: uint32 ``[n_bytes, words...]`` (:func:`qoi_array`)."""
    return f"{var}/qoi"


def qoi_array(blob):
    """``blob`` (bytes or None) as the stored ``X/qoi`` block: uint32 ``[len(blob), blob zero-padded to words...]``.

    Words, not bytes: ADIOS2's Python ``BlocksInfo`` cannot decode the min/max of a uint8 variable."""
    blob = b"" if blob is None else bytes(blob)
    words = np.frombuffer(blob + b"\0" * (-len(blob) % 4), dtype="<u4")
    return np.concatenate([np.array([len(blob)], dtype="<u4"), words]).astype(np.uint32)


def qoi_blob(arr):
    """Inverse of :func:`qoi_array`: the side information (bytes) or None (length 0)."""
    arr = np.asarray(arr, dtype="<u4").ravel()
    if arr.size == 0 or arr[0] == 0:
        return None
    return arr[1:].tobytes()[: int(arr[0])]


def field_names(available):
    """Field variables among ADIOS2 variable names (those written raw or as payload)."""
    names = set()
    for n in available:
        if n.endswith("/report"):
            names.add(n[: -len("/report")])
    return sorted(names)


def make_report(**values):
    """A report row (ndarray of shape (len(REPORT_FIELDS),), float64); missing fields are 0."""
    row = np.zeros(len(REPORT_FIELDS))
    for k, v in values.items():
        row[_COL[k]] = v
    return row


def report_get(row, name):
    """One field of a report row."""
    return float(row[_COL[name]])


def report_set(row, name, value):
    """Set one field of a report row (in place); returns ``row``."""
    row[_COL[name]] = value
    return row


def qoi_report(row, blob, worst, stats):
    """Count a block's moment side information in its report ``row`` (in place): ``qoi_bytes``, ``qoi_worst``,
    ``blob`` added to ``sent_bytes``, and the error of the corrected block (``stats``: ``sse``, ``max_abs_error``)."""
    row[_COL["qoi_bytes"]] = len(blob)
    row[_COL["qoi_worst"]] = worst
    row[_COL["sent_bytes"]] += len(blob)
    row[_COL["sse"]] = stats.sse
    row[_COL["max_abs_error"]] = stats.max_abs_error
    return row


def report_row(values):
    """A stored report row as a row of the current :data:`REPORT_FIELDS` (older, shorter rows: 0 appended)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size > len(REPORT_FIELDS):
        raise ValueError(f"report row has {values.size} values, more than the {len(REPORT_FIELDS)} known fields")
    return np.concatenate([values, np.zeros(len(REPORT_FIELDS) - values.size)])


def resolve_layout(layout):
    """``"auto"`` -> ``"shared"`` with an MPI build of ADIOS2, else ``"per_rank"``."""
    if layout == "auto":
        return "shared" if built_with_mpi() else "per_rank"
    return layout


def rank_stream(stream_path, rank):
    """Stream name of producer ``rank`` in the per-rank layout."""
    return f"{stream_path}.p{rank}"


def assign_blocks(n_blocks, n_readers, reader):
    """M-to-N assignment: the producer blocks that staging rank ``reader`` reads.

    Contiguous, balanced split of writer ranks ``0..n_blocks-1`` over ``n_readers`` staging
    ranks (the first ``n_blocks % n_readers`` ranks take one more): the simulations' own
    :func:`~stagelearn.sim_mocks.decomposition.balanced_split` of a grid axis. Contiguous ranges keep
    neighbouring subdomains together, so each staging rank sees a spatially coherent - and
    therefore non-i.i.d. - part of the domain; with ``n_readers > n_blocks`` some ranks read
    nothing but still take part in learning collectives.

    Returns
    -------
    blocks : range
    """
    start, count = balanced_split(n_blocks, n_readers, reader)
    return range(start, start + count)
