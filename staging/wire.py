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
REPORT_FIELDS = (
    "step", "rank", "encoder_version", "raw_bytes", "sent_bytes", "sse", "n", "max_abs_error",
    "vmin", "vmax", "n_raw_tiles", "sz3_bytes", "sz3_sse", "local_psnr_db", "n_flagged", "anomaly_bytes",
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
