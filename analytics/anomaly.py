"""Anomaly scores from reconstruction errors, their running robust statistics, and persistence.

A tile is anomalous when the learned model reconstructs it much worse than it usually
reconstructs tiles of the same variable. With a full orthonormal basis the *coded* error of any
tile is set by the quantizer, so the model error used here is the PCA residual outside the
``k`` leading components (the squared prediction error, or Q statistic, of PCA monitoring;
Jackson & Mudholkar, Technometrics 1979), with ``k`` the components explaining 99.9% of the
variance. The score of a tile is a robust z-score of its log-residual,

    e = log10(max(rmse_residual, rmse_target) / value_range),
    score = (e - median(e)) / max(1.4826 * MAD(e), 0.1),

where ``rmse_target`` is the error the codec is allowed anyway (residuals below it do not
matter), and median and median absolute deviation (MAD) describe the recent distribution of
``e`` over all tiles of the variable (Hampel's robust scale: 1.4826 * MAD estimates the standard
deviation of a normal sample and ignores outliers; the 0.1-decade floor keeps a perfectly
uniform distribution from flagging noise). Producers send a fixed-bin histogram of ``e``
per block; staging merges them with exponential forgetting (:class:`LogErrorHistogram`) and ships
median and MAD with each encoder. :class:`PersistenceTracker` turns a change that stays for
``persistence_steps`` steps from an anomaly into the new normal.
"""

from __future__ import annotations

import numpy as np

#: Histogram bins of e = log10(rmse / range): 96 bins from -9 to 0 (tile errors of 1e-9 to 1 x range).
HIST_EDGES = np.linspace(-9.0, 0.0, 97)
_MAD_TO_SIGMA = 1.4826
_MIN_SIGMA = 0.1  # decades; floor so a perfectly uniform error distribution does not flag noise


def log_errors(tile_sse, n_features, value_range, floor_rmse=0.0):
    """``log10(max(rmse, floor_rmse) / value_range)`` per tile (clipped to the histogram range).

    Parameters
    ----------
    tile_sse : ndarray of shape (n_tiles,)
        Squared error summed over each tile.
    n_features : int
        Values per tile.
    value_range : float
        The variable's value range in this step (``> 0``).
    floor_rmse : float, default=0
        Errors below this RMSE count as this RMSE.

    Returns
    -------
    e : ndarray of shape (n_tiles,), float64
    """
    rmse = np.maximum(np.sqrt(np.asarray(tile_sse, dtype=np.float64) / n_features), floor_rmse)
    with np.errstate(divide="ignore"):
        e = np.log10(rmse / max(float(value_range), 1e-300))
    return np.clip(e, HIST_EDGES[0], HIST_EDGES[-1])


def residual_energy(coef, centred_energy, n_model):
    """Squared PCA residual of each tile outside the ``n_model`` leading components.

    Parameters
    ----------
    coef : ndarray of shape (n_tiles, n_components)
        Coefficients on an orthonormal basis sorted by decreasing variance.
    centred_energy : ndarray of shape (n_tiles,)
        Squared norm of each tile after mean removal.
    n_model : int

    Returns
    -------
    spe : ndarray of shape (n_tiles,), float64 (non-negative)
    """
    lead = np.asarray(coef[:, :n_model], dtype=np.float64)
    return np.maximum(np.asarray(centred_energy, dtype=np.float64) - np.einsum("ij,ij->i", lead, lead), 0.0)


def histogram(e):
    """Counts of ``e`` in :data:`HIST_EDGES` (ndarray of shape (96,), float64)."""
    return np.histogram(e, bins=HIST_EDGES)[0].astype(np.float64)


def scores(e, median, mad):
    """Robust z-scores of log-errors ``e`` given the reference ``median`` and ``mad`` (decades)."""
    sigma = max(_MAD_TO_SIGMA * float(mad), _MIN_SIGMA)
    return (np.asarray(e, dtype=np.float64) - float(median)) / sigma


class LogErrorHistogram:
    """Exponentially forgetting histogram of tile log-errors, with median and MAD.

    Parameters
    ----------
    decay : float, default=0.9
        Weight kept by the past at each :meth:`update` (effective memory ``1 / (1 - decay)``
        updates), so the reference follows slow drift.
    """

    def __init__(self, decay=0.9):
        self.decay = decay
        self.counts = np.zeros(HIST_EDGES.size - 1)

    def update(self, counts):
        """Fold in one step's merged histogram."""
        self.counts = self.decay * self.counts + np.asarray(counts, dtype=np.float64)
        return self

    @property
    def total(self):
        return float(self.counts.sum())

    def quantile(self, q):
        """Quantile of the histogram by linear interpolation inside bins."""
        c = np.concatenate([[0.0], np.cumsum(self.counts)])
        if c[-1] <= 0:
            return float("nan")
        return float(np.interp(q * c[-1], c, HIST_EDGES))

    def median_mad(self):
        """``(median, MAD)`` of the log-errors, in decades.

        MAD is taken from the histogram of ``|e - median|`` rebuilt from the bin centres.
        """
        med = self.quantile(0.5)
        centres = 0.5 * (HIST_EDGES[1:] + HIST_EDGES[:-1])
        dev = np.abs(centres - med)
        order = np.argsort(dev)
        cum = np.cumsum(self.counts[order])
        if cum.size == 0 or cum[-1] <= 0:
            return med, float("nan")
        k = np.searchsorted(cum, 0.5 * cum[-1])
        return med, float(dev[order][min(k, dev.size - 1)])


class PersistenceTracker:
    """Counts consecutive flags per tile; a tile flagged ``persistence_steps`` times in a row is
    no longer an anomaly but the new normal, until its score falls back below the threshold.

    Parameters
    ----------
    persistence_steps : int
    """

    def __init__(self, persistence_steps):
        self.persistence_steps = int(persistence_steps)
        self.count = {}

    def update(self, candidates):
        """Update with this step's candidate tile indices (score above threshold).

        Returns
        -------
        flagged : ndarray of int
            Candidates still counted as anomalies.
        persistent : ndarray of int
            Candidates that persisted long enough to count as the new normal.
        """
        candidates = set(int(i) for i in candidates)
        self.count = {i: self.count.get(i, 0) + 1 for i in candidates}
        flagged = sorted(i for i, c in self.count.items() if c <= self.persistence_steps)
        persistent = sorted(i for i, c in self.count.items() if c > self.persistence_steps)
        return np.array(flagged, dtype=np.int64), np.array(persistent, dtype=np.int64)


class AnomalyScorer:
    """Scores one block's tiles and decides which are flagged (producer side).

    Used as the ``tile_hook`` of :func:`~stagelearn.analytics.codec.encode_block`: called with
    the tiles' coefficients, it returns the flagged tiles (sent raw) and keeps the anomaly map
    (for the ``X/anomaly`` stream variable) and the histogram of log-residuals (which travels,
    zstd-compressed, as the payload section ``err_hist``).

    Parameters
    ----------
    policy : dict
        The encoder's anomaly policy (``method``, ``threshold``, ``top_k``, ``report_score``,
        ``max_report``, ``persistence_steps``, ``n_components``, ``stats``).
    variable : str
    value_range : float
        The variable's global value range in this step.
    n_features : int
        Values per tile.
    floor_rmse : float
        The codec's target RMSE in this step (residuals below it count as it).
    tracker : PersistenceTracker
        This producer's tracker for ``variable``.
    """

    def __init__(self, policy, variable, value_range, n_features, floor_rmse, tracker):
        self.policy, self.variable = policy, variable
        self.value_range, self.n_features, self.tracker = value_range, n_features, tracker
        self.floor_rmse = floor_rmse
        self.flagged = np.zeros(0, dtype=np.int64)
        self.persistent = np.zeros(0, dtype=np.int64)
        self.rows = np.zeros((0, 4))
        self.hist = np.zeros(HIST_EDGES.size - 1)

    def __call__(self, coef, centred_energy):
        n_model = int((self.policy.get("n_components") or {}).get(self.variable, coef.shape[1]))
        spe = residual_energy(coef, centred_energy, n_model)
        e = log_errors(spe, self.n_features, self.value_range, self.floor_rmse)
        self.hist = histogram(e)
        stats = (self.policy.get("stats") or {}).get(self.variable)
        if not stats:
            return self.flagged  # no reference yet: nothing is flagged
        s = scores(e, *stats)
        pol = self.policy
        if pol["method"] == "threshold":
            candidates = np.flatnonzero(s > pol["threshold"])
        else:
            top = np.argsort(s)[::-1][: pol["top_k"]]
            candidates = top[s[top] > pol["report_score"]]
        self.flagged, persistent = self.tracker.update(candidates)
        self.persistent = persistent
        shown = np.flatnonzero(s >= pol["report_score"])
        shown = shown[np.argsort(s[shown])[::-1][: pol["max_report"]]]
        shown = np.union1d(shown, np.union1d(self.flagged, persistent)).astype(np.int64)
        self.rows = np.column_stack([shown, s[shown], np.isin(shown, self.flagged), np.isin(shown, persistent)]).astype(np.float64)
        # flagged tiles travel raw (exact, kept out of the learner); persistent ones too, so the
        # learner receives the new normal until the model explains it and their score drops
        return np.union1d(self.flagged, persistent)

    def sections(self):
        """Payload sections: the histogram as zstd-compressed uint32 counts."""
        import zstandard

        return {"err_hist": zstandard.ZstdCompressor().compress(self.hist.astype(np.uint32).tobytes())}

    def map_array(self):
        """The anomaly map as sent: ``[n, tile, score, flagged, persistent, ...]`` (float32)."""
        return np.concatenate([[float(len(self.rows))], self.rows.ravel()]).astype(np.float32)


def payload_histogram(sections):
    """The ``err_hist`` section of a payload as float64 counts, or None if absent."""
    import zstandard

    if "err_hist" not in sections:
        return None
    raw = zstandard.ZstdDecompressor().decompress(bytes(sections["err_hist"]), max_output_size=4 * (HIST_EDGES.size - 1))
    counts = np.frombuffer(raw, dtype=np.uint32)
    if counts.size != HIST_EDGES.size - 1:
        raise ValueError(f"err_hist section holds {counts.size} bins, expected {HIST_EDGES.size - 1}")
    return counts.astype(np.float64)


def parse_map(arr):
    """Inverse of :meth:`AnomalyScorer.map_array`: ndarray of shape (n, 4)."""
    arr = np.asarray(arr, dtype=np.float64).ravel()
    n = int(arr[0]) if arr.size else 0
    if arr.size != 1 + 4 * n:
        raise ValueError(f"anomaly map of {arr.size} values does not hold {n} rows")
    return arr[1:].reshape(n, 4)
