"""Pacing of online training against the stream: staging must not hold the simulation up.

With SST's bounded queue and ``QueueFullPolicy=Block`` a staging side that spends longer per step
than the simulation makes the producers wait in ``EndStep``. :class:`TrainingPace` sets the
training iterations of the next step by additive increase / multiplicative decrease (as TCP
congestion control, Jacobson 1988): one more while every staging rank still waited for its last
step (it is ahead of the stream), half as many as soon as one did not (the next step was already
queued, so producers may be blocked).
"""

from __future__ import annotations

import logging

from .mpiutil import allreduce_flag

logger = logging.getLogger(__name__)


class TrainingPace:
    """Training iterations per output step, adapted to the stream (collective :meth:`update`).

    Parameters
    ----------
    max_iterations : int
        Upper bound (``learner.autoencoder.iterations_per_step``); also the start value.
    adaptive : bool, default=True
        False keeps ``max_iterations`` every step.
    idle_fraction : float, default=0.1
        A rank is ahead of the stream when it waited for its last step at least this fraction of
        the time it then spent on the step.

    Attributes
    ----------
    iterations : int
        Iterations for the next step.
    history : list of int
        Iterations used at each step so far.
    """

    def __init__(self, max_iterations, *, adaptive=True, idle_fraction=0.1):
        self.max_iterations = int(max_iterations)
        self.iterations = self.max_iterations
        self.adaptive, self.idle_fraction = adaptive, float(idle_fraction)
        self.history = []

    def update(self, comm, wait_s, busy_s):
        """Record this step and set the next step's iterations (collective over ``comm``).

        Parameters
        ----------
        comm : mpi4py.MPI.Comm
            The staging ranks; they agree on one value (training is collective).
        wait_s : float
            Seconds this rank waited for the step to arrive.
        busy_s : float
            Seconds this rank then spent on the step (learning, output).
        """
        self.history.append(self.iterations)
        if not self.adaptive:
            return self.iterations
        ahead = allreduce_flag(comm, wait_s >= self.idle_fraction * busy_s, op="min")
        new = min(self.max_iterations, self.iterations + 1) if ahead else max(1, self.iterations // 2)
        if new != self.iterations:
            logger.debug("training iterations per step %d -> %d (waited %.3f s, busy %.3f s)", self.iterations, new,
                         wait_s, busy_s)
        self.iterations = new
        return new
