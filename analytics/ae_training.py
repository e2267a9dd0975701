"""Online training of a :class:`~.autoencoder.TileAutoencoder` across staging ranks.

Each staging rank holds part of every step's tiles. :class:`AETrainer` keeps one model per
rank, identical on all ranks after every ``partial_fit``, trained with Adam on the
straight-through quantized reconstruction error, in one of two modes:

``"ddp"``
    Synchronous data parallelism: every iteration, one all-reduce of the flattened gradients
    (plus the sample count and error sum), so the step is the gradient of the mean error over
    all ranks' minibatches, whatever their sizes (zero included). This is what
    ``DistributedDataParallel`` does, done by hand: DDP divides by the number of ranks, which
    weights ranks with small or empty batches wrongly, and its bucketing buys nothing for a
    model of a few ten thousand parameters.
``"local_sgd"``
    Local SGD (Stich, "Local SGD converges fast and communicates little", ICLR 2019): each rank
    takes Adam steps on its own minibatches, and every ``sync_every`` iterations, and at the
    end of each ``partial_fit``, one all-reduce averages the parameters weighted by the
    samples each rank trained on since the last average. Adam moments stay local.

Collectives go through ``torch.distributed`` (gloo by default) in a process group set up from
the mpi4py communicator by :func:`init_process_group_from_mpi`; the one-off per-call input
check uses the mpi4py communicator itself. A single rank needs no process group.
"""

from __future__ import annotations

import copy
import logging
import math
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .autoencoder import TileAutoencoder, named_arrays, validate_spec
from .comm_counter import CommCounter

logger = logging.getLogger(__name__)


def _default_comm(comm):
    if comm is not None:
        return comm
    from mpi4py import MPI

    return MPI.COMM_SELF


def init_process_group_from_mpi(comm, *, timeout_s=60, backend="gloo", host="127.0.0.1"):
    """Start the ``torch.distributed`` default process group over the ranks of ``comm``.

    Rank 0 opens the rendezvous store on a free TCP port of ``host`` (bound directly to
    port 0, so no other process can take the port between probing and binding) and
    broadcasts the port with mpi4py; torch ranks and world size are those of ``comm``.
    Collective over ``comm``; idempotent.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    timeout_s : float, default=60
        Timeout of the rendezvous and of every later collective of the group.
    backend : str, default="gloo"
        ``"gloo"`` (CPU and CUDA tensors) or ``"nccl"`` (CUDA tensors only).
    host : str, default="127.0.0.1"
        Address of rank 0 that the other ranks can reach: loopback works when all ranks of
        ``comm`` share a node; give rank 0's network address otherwise, or ``"auto"``: the
        address of rank 0's host name, broadcast to the other ranks.

    Returns
    -------
    group : torch.distributed.ProcessGroup
        The default (world) group.

    Raises
    ------
    RuntimeError
        If a process group already exists with another rank or size, or rank 0 could not
        open the store.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, size):
            raise RuntimeError(f"a torch.distributed group already exists as rank {dist.get_rank()} of "
                               f"{dist.get_world_size()}, but comm has this rank as {rank} of {size}")
        return dist.group.WORLD
    timeout = timedelta(seconds=timeout_s)
    if host == "auto":
        import socket

        host = comm.bcast(socket.gethostbyname(socket.gethostname()) if rank == 0 else None, root=0)
    store, port, error = None, -1, None
    if rank == 0:
        try:
            store = dist.TCPStore(host, 0, size, True, timeout=timeout, wait_for_workers=False)
            port = store.port
        except (RuntimeError, OSError) as exc:  # told to every rank below, instead of leaving them waiting
            error = exc
    port = comm.bcast(port, root=0)
    if port < 0:
        raise RuntimeError(f"rank 0 could not open a TCP store on {host}: {error}")
    if rank != 0:
        store = dist.TCPStore(host, port, size, False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    logger.debug("torch.distributed %s group: rank %d of %d via %s:%d", backend, rank, size, host, port)
    return dist.group.WORLD


def destroy():
    """Destroy the default ``torch.distributed`` process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


class AETrainer:
    """Train a :class:`TileAutoencoder` online on tiles partitioned across MPI ranks.

    Construction and ``partial_fit`` are collective over ``comm``: every rank calls them the
    same number of times, with possibly empty batches.

    Parameters
    ----------
    spec : AESpec or dict
        Architecture and normalisation (see :func:`~.autoencoder.spec_from_data`).
    comm : mpi4py.MPI.Comm or None, default=None
        Ranks sharing the model. ``None`` means ``MPI.COMM_SELF``.
    mode : {"ddp", "local_sgd"}, default="ddp"
        Gradient all-reduce every iteration, or parameter averaging every ``sync_every``
        iterations (see the module docstring).
    sync_every : int, default=8
        Iterations between parameter averages in ``"local_sgd"`` mode.
    lr : float, default=1e-3
        Adam learning rate.
    batch_size : int, default=256
        Tiles per rank and iteration (fewer when fewer are available).
    iterations_per_step : int, default=20
        Optimizer iterations per ``partial_fit``.
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        ``"auto"``: CUDA when ``torch.cuda.is_available()``, else the CPU.
    seed : int, default=0
        Seeds the initial weights (then broadcast from rank 0) and, with the rank, the
        minibatch sampling. The global torch RNG is left untouched.
    buffer : object or None, default=None
        Replay buffer with ``add(tiles, sources, step)``, ``sample(n, rng)`` returning an
        ndarray of shape (m, prod(tile_shape)) with ``m <= n``, and ``__len__``. ``None``:
        train on each call's tiles only.
    backend : str, default="gloo"
        ``torch.distributed`` backend when ``comm`` has more than one rank.
    timeout_s : float, default=60
        Timeout of the process group's collectives.
    host : str, default="127.0.0.1"
        Rendezvous address of rank 0 (see :func:`init_process_group_from_mpi`).

    Attributes
    ----------
    net_ : TileAutoencoder
        The model being trained, on ``device_``.
    device_ : torch.device
    optimizer_ : torch.optim.Adam
        The optimizer (its moments are this rank's: checkpoints save them per rank).
    counter : CommCounter
        Payload bytes and rounds of this rank, counted as in :mod:`.comm_counter`
        (also when ``comm`` has one rank and nothing is sent).
    n_samples_seen_ : int
        Tiles passed to ``partial_fit`` on all ranks.
    loss_ : float
        Mean squared error (normalised units, quantized latents) over every minibatch of
        every rank in the last ``partial_fit``; NaN when there were none.
    n_iter_ : int
        Optimizer iterations run so far.

    Notes
    -----
    With ``P`` parameters and ``T = iterations_per_step``, each ``partial_fit`` sends, per
    rank, one 16-byte float64 all-reduce (input check) and then

    - ``"ddp"``: ``T`` all-reduces of ``P + 2`` float32 values;
    - ``"local_sgd"``: ``ceil(T / sync_every)`` all-reduces of ``P + 2`` float32 values.

    Construction broadcasts the ``P`` float32 initial parameters from rank 0 (one round,
    ``(size - 1) * 4 * P`` bytes counted at rank 0).
    """

    kind = "ae"  # the learner protocol of :mod:`.learners` (an Encoder takes it as is)


    def __init__(self, spec, *, comm=None, mode="ddp", sync_every=8, lr=1e-3, batch_size=256,
                 iterations_per_step=20, device="auto", seed=0, buffer=None, backend="gloo", timeout_s=60,
                 host="127.0.0.1"):
        if mode not in ("ddp", "local_sgd"):
            raise ValueError(f"mode must be 'ddp' or 'local_sgd', got {mode!r}")
        for name, value in (("sync_every", sync_every), ("batch_size", batch_size),
                            ("iterations_per_step", iterations_per_step)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.spec = validate_spec(spec)
        self.comm = _default_comm(comm)
        self.mode, self.sync_every, self.lr = mode, int(sync_every), float(lr)
        self.batch_size, self.iterations_per_step = int(batch_size), int(iterations_per_step)
        self.device, self.seed, self.buffer = device, seed, buffer
        self.counter = CommCounter(self.comm)
        self._rank, self._size = self.comm.Get_rank(), self.comm.Get_size()
        if self._size > 1:
            init_process_group_from_mpi(self.comm, timeout_s=timeout_s, backend=backend, host=host)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and torch.cuda.device_count() > 1:  # one GPU per rank of a node, round robin
            from mpi4py import MPI

            local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
            device = f"cuda:{local.Get_rank() % torch.cuda.device_count()}"
            local.Free()
        self.device_ = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = TileAutoencoder(self.spec)
        self.net_ = net.to(self.device_)
        flat = torch.nn.utils.parameters_to_vector(self.net_.parameters()).detach()
        if self._size > 1:
            dist.broadcast(flat, src=0)
        self.counter.bytes_sent += flat.numel() * 4 * (self._size - 1) if self._rank == 0 else 0
        self.counter.rounds += 1
        torch.nn.utils.vector_to_parameters(flat, self.net_.parameters())
        self.optimizer_ = torch.optim.Adam(self.net_.parameters(), lr=self.lr)
        self._rng = np.random.default_rng([seed, self._rank])
        self.n_samples_seen_, self.n_iter_, self.loss_, self._calls = 0, 0, math.nan, 0

    # ------------------------------------------------------------------ accounting
    @property
    def bytes_communicated(self):
        """Payload bytes this rank sent (``counter.bytes_sent``)."""
        return self.counter.bytes_sent

    @property
    def rounds(self):
        """Communication rounds (``counter.rounds``)."""
        return self.counter.rounds

    def model_arrays(self):
        """The arrays an encoder carries (:func:`~.autoencoder.named_arrays`, float32)."""
        return named_arrays(self.model)

    @property
    def model(self):
        """The trained :class:`TileAutoencoder` on the CPU (``net_`` itself, or a CPU copy)."""
        return self.net_ if self.device_.type == "cpu" else copy.deepcopy(self.net_).cpu()

    def _allreduce(self, flat):
        """Sum a 1-D float32 tensor over ranks, in place; counted in ``counter``."""
        if self._size > 1:
            dist.all_reduce(flat)
        self.counter.bytes_sent += flat.numel() * flat.element_size()
        self.counter.rounds += 1
        return flat

    # ------------------------------------------------------------------ training
    def _check(self, tiles):
        """Validate this rank's batch and agree on it with every rank; returns the global count."""
        d, error = self.spec.n_features, None
        tiles = np.asarray(tiles)
        if tiles.dtype.kind not in "fiu":
            error, tiles = f"tiles must be a numeric array, got dtype {tiles.dtype}", np.zeros((0, d))
        elif tiles.ndim != 2 or tiles.shape[1] != d:
            error = f"tiles must have shape (n_tiles, {d}), got {tiles.shape}"
        elif not np.all(np.isfinite(tiles)):
            error = "tiles contain NaN or Inf; remove or flag those tiles before partial_fit"
        n = tiles.shape[0] if error is None else 0
        total = self.counter.allreduce(np.array([n, error is not None]))
        if total[1]:
            raise ValueError(error or "another rank passed an invalid batch to partial_fit")
        return int(total[0])

    def _minibatch(self, tiles):
        if self.buffer is not None:
            if len(self.buffer) == 0:
                return tiles[:0]
            batch = self.buffer.sample(self.batch_size, self._rng)
            return np.asarray(batch, dtype=np.float32).reshape(-1, self.spec.n_features)
        if len(tiles) > self.batch_size:
            return tiles[self._rng.choice(len(tiles), self.batch_size, replace=False)]
        return tiles

    def _sse(self, batch):
        """Sum of squared normalised errors of ``batch`` (a graph-attached scalar tensor)."""
        x = torch.from_numpy(np.require(batch, np.float32, ["C", "W"])).to(self.device_)
        x = (x - self.spec.offset) / self.spec.scale
        return ((self.net_(x) - x) ** 2).sum()

    def _grad_vector(self):
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.net_.parameters()])

    def partial_fit(self, tiles, *, sources=None, step=None):
        """Add this rank's tiles and train for ``iterations_per_step`` iterations (collective).

        Parameters
        ----------
        tiles : ndarray of shape (n_tiles, prod(tile_shape))
            This rank's tiles of the step, field units; ``n_tiles`` may be 0.
        sources : ndarray of shape (n_tiles,) or None, default=None
            Passed to ``buffer.add``.
        step : int or None, default=None
            Passed to ``buffer.add``; ``None``: the number of earlier calls.

        Returns
        -------
        self : object

        Raises
        ------
        ValueError
            On every rank, if any rank's tiles have the wrong shape or NaN/Inf values.
        """
        n_total = self._check(tiles)
        tiles = np.ascontiguousarray(tiles, dtype=np.float32)
        if self.buffer is not None:
            self.buffer.add(tiles, sources, self._calls if step is None else step)
        self._calls += 1
        self.n_samples_seen_ += n_total
        d, T = self.spec.n_features, self.iterations_per_step
        sse_total, n_seen = 0.0, 0.0
        self.net_.train()
        if self.mode == "ddp":
            for _ in range(T):
                batch = self._minibatch(tiles)
                self.optimizer_.zero_grad(set_to_none=True)
                sse = torch.zeros((), device=self.device_)
                if len(batch):
                    sse = self._sse(batch)
                    sse.backward()
                stats = torch.tensor([len(batch), sse.item()], dtype=torch.float32, device=self.device_)
                flat = self._allreduce(torch.cat([self._grad_vector(), stats]))
                n_batch = flat[-2].item()
                n_seen, sse_total = n_seen + n_batch, sse_total + flat[-1].item()
                if n_batch > 0:
                    self._set_grads(flat[:-2] / (n_batch * d))
                    self.optimizer_.step()
        else:
            weight, sse_local = 0, 0.0
            for it in range(1, T + 1):
                batch = self._minibatch(tiles)
                if len(batch):
                    self.optimizer_.zero_grad(set_to_none=True)
                    sse = self._sse(batch)
                    (sse / (len(batch) * d)).backward()
                    self.optimizer_.step()
                    weight, sse_local = weight + len(batch), sse_local + sse.item()
                if it % self.sync_every == 0 or it == T:
                    n, s = self._average(weight, sse_local)
                    n_seen, sse_total, weight, sse_local = n_seen + n, sse_total + s, 0, 0.0
        self.n_iter_ += T
        self.loss_ = sse_total / (n_seen * d) if n_seen > 0 else math.nan
        logger.debug("partial_fit (%s): %d tiles on all ranks, loss %.4g", self.mode, n_total, self.loss_)
        return self

    def _set_grads(self, flat):
        """Set the parameters' gradients from one flat vector."""
        offset = 0
        for p in self.net_.parameters():
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def _average(self, weight, sse):
        """Sample-weighted parameter average over ranks; returns the global (weight, sse)."""
        params = torch.nn.utils.parameters_to_vector(self.net_.parameters()).detach()
        stats = torch.tensor([weight, sse], dtype=torch.float32, device=self.device_)
        flat = self._allreduce(torch.cat([params * weight, stats]))
        total = flat[-2].item()
        if total > 0:
            torch.nn.utils.vector_to_parameters(flat[:-2] / total, self.net_.parameters())
        return total, flat[-1].item()
