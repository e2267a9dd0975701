"""Learner checkpoints: staging's state as named arrays plus a JSON file, so a new staging job can go on.

``<run_dir>/checkpoint/`` holds, from staging rank 0, ``learner.npz`` and ``state.json`` (format,
last step stored, steps learned, encoder version, publications, tile shapes, value ranges, the
learners' scalars and autoencoder specs), and from every rank ``r`` ``rank<r>.npz`` (autoencoder
only: its replay buffer and Adam state). Each learner's part is its ``get_state()`` (``meta`` in
``state.json``, ``arrays`` in ``learner.npz``, ``rank_arrays`` in ``rank<r>.npz``, every name
prefixed by ``X/``) and is given back with ``set_state``; this module knows no learner class.
Arrays per variable ``X``:

- exact PCA (:class:`~stagelearn.analytics.learners.incremental_pca.IncrementalPCA`, the same on every rank):
  ``X/mean_``, ``X/scatter`` (the running scatter matrix: the whole state), ``X/components_`` and
  the other fitted attributes, float64;
- autoencoder (:class:`~stagelearn.analytics.learners.autoencoder.AutoencoderLearner`): ``X/ae/<parameter>`` (float32,
  :func:`~stagelearn.analytics.autoencoder.named_arrays`); per rank ``X/buffer/{tiles,sources,steps}``
  and ``X/opt/<i>/{exp_avg,exp_avg_sq,step}`` (and ``X/buffer/counts``);
- the stream codec's blend weights (``codec.kind: stream``,
  :class:`~stagelearn.analytics.stream_learner.StreamWeightsLearner`, the same on every rank):
  ``X/stats`` (the forgotten sums of the blend statistics, float64: the whole state) and, because
  the weights it publishes are a fit of those sums rather than the state itself,
  ``X/published/stream/weights`` (float32, what its encoder entry carries).

A learner whose published arrays are a fit of its state (kinds in :data:`PUBLISHED_KINDS`) has them
stored under ``X/published/``; :func:`load` checks that the restored learner publishes exactly those
values, so a restarted run goes on with the weights the checkpoint held or refuses to start.

Files are loaded with ``allow_pickle=False``. Each is written under a temporary name and renamed;
``state.json`` goes last, and every file carries the number of steps learned, so a checkpoint cut by
a crash mid-write is refused rather than mixed. Restarting (``staging.restart_from``) rebuilds the
learners: the PCA state, the autoencoder weights and the stream learner's statistics and published
weights bit for bit, buffers and optimizer moments per
rank (with the same number of staging ranks; otherwise buffers start empty). The replay buffers'
random generators and the reservoir's acceptance history restart (``n_seen_`` is kept).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from ..analytics.learners import STREAM_KIND, checkpointable, learner_kind
from .errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT = "stagelearn.checkpoint/2"
PUBLISHED = "published/"  # prefix of the published arrays of a learner whose model is a fit of its state
PUBLISHED_KINDS = (STREAM_KIND,)
_KIND_WORDS = {STREAM_KIND: "the stream codec's blend weights (codec.kind stream)",
               "pca": "a PCA learner (codec.kind learned, learner.type pca)",
               "ae": "an autoencoder (codec.kind learned, learner.type autoencoder)"}


def supported(learner_cfg, codec_kind="learned"):
    """True when the run's learner can be checkpointed: the stream codec's (``codec_kind`` ``"stream"``),
    the exact incremental PCA or the autoencoder."""
    return checkpointable(learner_cfg, codec_kind)


def _what(kind):
    return _KIND_WORDS.get(kind, f"a {kind!r} learner")


def _write_npz(path, arrays):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


def save(directory, *, learners, step, encoder_version, published, tile_shapes, ranges, rank=0, seen=0):
    """Write this rank's part of a checkpoint (no communication; every staging rank calls it).

    Parameters
    ----------
    directory : str
    learners : dict of str to learner
        Learners of the protocol of :mod:`stagelearn.analytics.learners`; those not ``ready``
        (or None) are skipped.
    step : int
        Last output step stored (rank 0's count).
    encoder_version : int
        Last published encoder version (0: none yet).
    published : list of (int, int)
        ``(version, step)`` of each publication.
    tile_shapes : dict of str to tuple of int
    ranges : dict of str to (float, float)
        Value ranges (rank 0 accounts them).
    rank : int
        This staging rank: rank 0 writes the model and ``state.json``, every rank its ``rank<r>.npz``.
    seen : int
        Steps learned (the same on every rank), to match the files of one checkpoint.
    """
    os.makedirs(directory, exist_ok=True)
    model, mine, scalars = {"seen": np.array([int(seen)])}, {"seen": np.array([int(seen)])}, {}
    for var, est in learners.items():
        if est is None or not est.ready:
            continue
        state = est.get_state()
        scalars[var] = state["meta"]
        model.update({f"{var}/{k}": v for k, v in state["arrays"].items()})
        if est.kind in PUBLISHED_KINDS:
            model.update({f"{var}/{PUBLISHED}{k}": np.asarray(v) for k, v in est.model_arrays().items()})
        mine.update({f"{var}/{k}": v for k, v in state["rank_arrays"].items()})
    if rank == 0:
        _write_npz(os.path.join(directory, "learner.npz"), model)
    if len(mine) > 1:
        _write_npz(os.path.join(directory, f"rank{int(rank)}.npz"), mine)
    if rank != 0:
        return
    state = {"format": FORMAT, "step": int(step), "seen": int(seen), "encoder_version": int(encoder_version),
             "published": [list(p) for p in published], "tile_shapes": {k: list(v) for k, v in tile_shapes.items()},
             "ranges": {k: [float(a), float(b)] for k, (a, b) in ranges.items()}, "learners": _jsonable(scalars)}
    tmp = os.path.join(directory, "state.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, os.path.join(directory, "state.json"))
    logger.info("checkpoint at step %d (encoder version %d) in %s", step, encoder_version, directory)


def check(directory, learner_cfg, source="<config>", codec_kind=None):
    """Check, before anything starts, that ``directory`` holds a readable checkpoint for the run's learner.

    Parameters
    ----------
    directory : str
    learner_cfg : LearnerConfig
    source : str
        The run YAML, for the messages.
    codec_kind : {"learned", "stream"} or None
        The run's ``codec.kind``. None (not known here): a checkpoint of the stream codec's weights
        is accepted as well as one of ``learner_cfg``'s kind; :func:`load` refuses a mismatch when
        the run starts.

    Raises
    ------
    ConfigError
        Naming ``staging.restart_from`` and what is wrong.
    """
    def refuse_unless_supported():
        if not supported(learner_cfg, codec_kind or "learned"):
            raise ConfigError(f"{source}: staging.restart_from: learner.algorithm {learner_cfg.algorithm!r} is not "
                              "checkpointed (only the exact PCA, the autoencoder and the stream codec's weights are); "
                              "remove restart_from")

    if codec_kind is not None:  # known: refused before the files are read
        refuse_unless_supported()
    state_path = os.path.join(directory, "state.json")
    if not (os.path.exists(state_path) and os.path.exists(os.path.join(directory, "learner.npz"))):
        raise ConfigError(f"{source}: staging.restart_from: {directory} holds no checkpoint (state.json + "
                          "learner.npz); point it at <earlier run>/checkpoint")
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except ValueError as exc:
        raise ConfigError(f"{source}: staging.restart_from: {state_path} is unreadable ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{source}: staging.restart_from: {state_path} is not a {FORMAT} checkpoint")
    kinds = {v.get("kind") for v in state.get("learners", {}).values()}
    if not kinds:
        raise ConfigError(f"{source}: staging.restart_from: {directory} holds no trained learner yet (written before "
                          "the end of the warm-up)")
    if codec_kind is None and kinds == {STREAM_KIND}:
        return
    refuse_unless_supported()
    want = learner_kind(learner_cfg, codec_kind or "learned")
    if kinds != {want}:
        held = " and ".join(_what(k) for k in sorted(kinds, key=str))
        raise ConfigError(f"{source}: staging.restart_from: the checkpoint holds a {sorted(kinds, key=str)} learner "
                          f"({held}), the run trains {_what(want)}; restart from a checkpoint of a run with the "
                          "same codec.kind and learner.type, or remove restart_from")


def load(directory, comm, make_learner):
    """Read a checkpoint and rebuild its learners over ``comm`` (collective when it holds autoencoders).

    Parameters
    ----------
    directory : str
    comm : mpi4py.MPI.Comm
        The staging ranks.
    make_learner : callable
        ``make_learner(var, tile_shape)``: a fresh learner of the run's configuration, which
        ``set_state`` then fills (collectively, for the autoencoder).

    Returns
    -------
    state : dict
        ``state.json`` with tuples for tile shapes and ranges.
    learners : dict of str to learner

    Raises
    ------
    ConfigError
        If the directory holds no checkpoint, an unknown format, or files of different steps.
    """
    state_path, npz_path = os.path.join(directory, "state.json"), os.path.join(directory, "learner.npz")
    if not (os.path.exists(state_path) and os.path.exists(npz_path)):
        raise ConfigError(f"staging.restart_from: {directory} holds no checkpoint (state.json + learner.npz); "
                          "point it at <earlier run>/checkpoint")
    with open(state_path, encoding="utf-8") as f:
        try:
            state = json.load(f)
        except ValueError as exc:
            raise ConfigError(f"{state_path}: unreadable checkpoint state ({exc})") from None
    if state.get("format") != FORMAT:
        raise ConfigError(f"{state_path}: checkpoint format {state.get('format')!r}, expected {FORMAT!r}")
    arrays = _read_npz(npz_path, state["seen"])
    mine_path = os.path.join(directory, f"rank{comm.Get_rank()}.npz")
    mine = _read_npz(mine_path, state["seen"]) if os.path.exists(mine_path) else None
    learners = {}
    for var, meta in sorted(state["learners"].items()):
        prefix = f"{var}/"
        own = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        rank_arrays = None if mine is None else {k[len(prefix):]: v for k, v in mine.items() if k.startswith(prefix)}
        est = make_learner(var, tuple(state["tile_shapes"][var]))
        if est.kind != meta["kind"]:
            raise ConfigError(f"{state_path}: variable {var} holds a {meta['kind']!r} learner ({_what(meta['kind'])}), "
                              f"the run trains {est.kind!r} ({_what(est.kind)}); restart from a checkpoint of a run "
                              "with the same codec.kind and learner.type")
        published = {k[len(PUBLISHED):]: v for k, v in own.items() if k.startswith(PUBLISHED)}
        own = {k: v for k, v in own.items() if not k.startswith(PUBLISHED)}
        learners[var] = est.set_state({"meta": meta, "arrays": own, "rank_arrays": rank_arrays})
        _check_published(learners[var], published, var, state_path)
    state["tile_shapes"] = {k: tuple(v) for k, v in state["tile_shapes"].items()}
    state["ranges"] = {k: tuple(v) for k, v in state["ranges"].items()}
    return state, learners


def _check_published(est, saved, var, state_path):
    """The restored learner of ``var`` publishes exactly the arrays the checkpoint stored (if it stored any)."""
    if not saved:
        return
    now = {k: np.asarray(v) for k, v in est.model_arrays().items()}
    for name in sorted(set(saved) | set(now)):
        a, b = saved.get(name), now.get(name)
        if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
            diff = (float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                    if a is not None and b is not None and a.shape == b.shape else None)
            raise ConfigError(f"{state_path}: variable {var}: the restored learner would publish {name} "
                              f"{'missing' if b is None else 'of shape ' + str(b.shape)} where the checkpoint holds "
                              f"{'none' if a is None else 'shape ' + str(a.shape)}"
                              f"{'' if diff is None else f' (values differ by up to {diff:.3g})'}; the checkpoint "
                              "does not match this stagelearn's learner: restart from a checkpoint written by it")


def _read_npz(path, seen):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if int(arrays["seen"][0]) != seen:
        raise ConfigError(f"{path} is of another checkpoint ({int(arrays['seen'][0])} steps learned, state.json says "
                          f"{seen}; a write was cut short); use an intact checkpoint")
    return arrays
