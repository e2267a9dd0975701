"""The producers' link to staging: encoders, acknowledgements, staging loss, fallback and replay.

Staging acknowledges every step it has stored (``model/ack`` on the model stream,
:mod:`.model_channel`) and publishes encoders on the same stream. Producer rank 0 polls it and
broadcasts what it saw, so that all producer ranks switch encoder, wait for the queue, and switch
to their fallback files at the same step boundary. Staging is declared lost when its model stream
fails (it died) or ends before the producers close (it left), or when it acknowledges no step for
``peer_timeout_s`` while the producers' queue is full. Then each rank writes, to its fallback
file, first the steps it sent that staging never acknowledged (it keeps the raw blocks of its
last ``QueueLimit + 3`` steps for that), then every later step. The simulation keeps running.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time

from ..analytics.encoder import Encoder
from . import signals
from .block_report import raw_record
from .errors import Interrupted, ModelFormatError
from .mpiutil import bcast_bytes
from .wire import report_get

logger = logging.getLogger(__name__)

STALL_S = 0.05  # a wait for staging longer than this (for an acknowledgement, or inside EndStep) is a stall
POLL_S = 0.02  # rank 0's polling interval while it waits for acknowledgements


def rss_mib():
    """Resident set size of this process in MiB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 2)
    except (OSError, ValueError, IndexError):
        return None


def record_bytes(records):
    """Bytes of a step's records as sent (payloads, or raw float32 blocks)."""
    return int(sum(len(r["payload"]) if "payload" in r else r["raw"].nbytes for r in records))


class StagingLink:
    """One producer rank's view of staging (collective over ``comm`` where stated).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The producer ranks.
    subscriber : ModelSubscriber or None
        On rank 0, the model stream's reader (``poll()`` returning an Encoder or None, ``acked``,
        ``ended``, ``failed``, ``close()``); None on the other ranks.
    fallback : FallbackSink
        This rank's fallback file (``write_step``, ``path``, ``steps``, ``close``).
    ledger : LedgerPart
        This rank's ledger part (``add``, ``close``).
    variables : dict of str to tuple
        The defined fields: name -> ``(shape, start, count)`` (replayed steps are written in this order).
    queue_limit : int
        SST ``QueueLimit`` of the data stream (0: unbounded).
    queue_full_policy : {"Block", "Discard"}
    peer_timeout_s : float, default=30
        Staging is lost when it acknowledged no step for this long while the queue is full.
    on_lost : callable, optional
        Called (no arguments) on every rank once staging is declared lost and the unacknowledged
        steps are replayed (the producer drops its engine there).
    clock, sleep : callable, optional
        ``time.monotonic`` and ``time.sleep`` (tests inject fakes).

    Attributes
    ----------
    encoder : Encoder or None
        The newest encoder staging published.
    acked : int
        Last output step staging acknowledged (-1: none).
    staging_lost : bool
    stalls, stall_s : int, float
        Steps that waited for staging, and the seconds waited.
    last_sent : int
        Last step put on the stream (-1: none).
    """

    def __init__(self, comm, subscriber, fallback, ledger, variables, *, queue_limit, queue_full_policy="Block",
                 peer_timeout_s=30.0, on_lost=None, clock=time.monotonic, sleep=time.sleep):
        self.comm, self.rank = comm, comm.Get_rank()
        self.subscriber, self.fallback, self.ledger, self.variables = subscriber, fallback, ledger, variables
        self.queue_limit, self.queue_full_policy = int(queue_limit), queue_full_policy
        self.peer_timeout_s = float(peer_timeout_s)
        self._on_lost, self._clock, self._sleep = on_lost, clock, sleep
        self.encoder = None
        self.acked = self.last_sent = -1
        self.staging_lost = False
        self.stalls, self.stall_s = 0, 0.0
        self._last_ack_change = clock()
        self._unacked = collections.deque(maxlen=max(self.queue_limit, 1) + 3)  # (step, {name: raw block})

    # ----------------------------------------------------------------- polling
    def poll(self, *, wait_for_queue=False):
        """Take the newest encoder and the acknowledgements (collective over ``comm``).

        Parameters
        ----------
        wait_for_queue : bool
            With ``QueueFullPolicy=Block``, wait (polling, interruptible) while writing the next step
            would leave more than ``queue_limit`` steps unacknowledged (so SST's own ``EndStep`` never
            blocks: acknowledgements come after SST releases a step); counted as a stall. Past
            ``peer_timeout_s`` without a new acknowledgement staging is declared lost.

        Returns
        -------
        new : bool
            True when a new encoder is now :attr:`encoder`.

        Raises
        ------
        Interrupted
            On every rank when rank 0 got SIGINT/SIGTERM (after switching to the fallback file
            if staging was lost as well).
        """
        frame, state = b"", {}
        if self.subscriber is not None:
            enc, state = self._poll_rank0(wait_for_queue)
            frame = enc.to_frame() if enc is not None else b""
        state = self._bcast_state(state)
        frame = bcast_bytes(self.comm, frame)
        self.acked = state.get("acked", self.acked)
        if state.get("stall_s"):
            self.stalls += 1
            self.stall_s += state["stall_s"]
        if state.get("lost") and not self.staging_lost:
            self._switch_to_fallback(state["lost"])
        if state.get("signal"):
            raise Interrupted(state["signal"])
        if frame:
            self.encoder = Encoder.from_frame(frame)
            logger.info("producer rank %d switches to encoder version %d", self.rank, self.encoder.version)
            return True
        return False

    def _bcast_state(self, state):
        """Rank 0's view of staging (acknowledged step, lost, stall, signal) on every rank (collective)."""
        return json.loads(bcast_bytes(self.comm, json.dumps(state).encode() if self.rank == 0 else b"").decode() or "{}")

    def _poll_rank0(self, wait_for_queue, *, until_step=None):
        """Rank 0: read the model stream; optionally wait for the queue to drain (or, with ``until_step``,
        for that step to be acknowledged). Returns ``(encoder or None, state dict)``."""
        sub, newest, clock = self.subscriber, None, self._clock
        t0 = clock()
        waited = False
        while True:
            try:
                enc = sub.poll() if not sub.ended else None
            except ModelFormatError as exc:
                logger.error("%s; keeping encoder version %s", exc, self.encoder.version if self.encoder else None)
                enc = None
            newest = enc or newest
            if sub.acked != self.acked:
                self.acked, self._last_ack_change = sub.acked, clock()
            lost = self._lost_reason()
            sent = self.last_sent
            if until_step is not None:
                pending = self.acked < until_step
            else:
                # the next step would make more than queue_limit steps unacknowledged: wait here, where
                # signals and timeouts work, instead of inside SST's EndStep (which holds the GIL)
                pending = wait_for_queue and self.queue_full_policy == "Block" and sent + 1 - self.acked > self.queue_limit
            if lost or not pending or self.staging_lost or (signals.pending() and until_step is None):
                break
            # with Discard, steps SST dropped are never acknowledged: at close, a quiet staging has
            # stored all it will (the rest is replayed to the fallback file)
            if until_step is not None and self.queue_full_policy == "Discard" \
                    and clock() - self._last_ack_change > min(2.0, self.peer_timeout_s):
                break
            if clock() - self._last_ack_change > self.peer_timeout_s:
                lost = (f"staging acknowledged no step for {self.peer_timeout_s:g} s (timeouts.peer_s) with steps "
                        f"{self.acked + 1}..{sent} waiting")
                break
            waited = True
            self._sleep(POLL_S)
        stall = clock() - t0 if waited and until_step is None else 0.0
        stall = stall if stall > STALL_S else 0.0
        return newest, {"acked": self.acked, "lost": lost, "stall_s": stall, "signal": signals.pending()}

    def _lost_reason(self):
        sub = self.subscriber
        if self.staging_lost or not sub.ended:
            return None
        return ("staging's model stream failed (staging died)" if sub.failed
                else "staging closed its model stream before the simulation ended")

    # ----------------------------------------------------------------- steps
    def sent(self, step, records, blocks, blocked_s):
        """Note a step put on the stream (local): its ledger line, its raw blocks kept for replay.

        Parameters
        ----------
        step : int
        records : list of dict
            The step's records as sent (``payload`` or ``raw``, and ``report``).
        blocks : dict of str to ndarray
            The raw float32 blocks (kept, not copied, until staging acknowledges the step).
        blocked_s : float
            Seconds ``EndStep`` blocked; beyond ``STALL_S`` it counts as a stall.
        """
        stalled = blocked_s > STALL_S
        if stalled:
            self.stalls += 1
            self.stall_s += blocked_s
        self.last_sent = step
        version = int(report_get(records[0]["report"], "encoder_version")) if records else 0
        self.ledger.add(step=step, rank=self.rank, to="stream", encoder_version=version, bytes=record_bytes(records),
                        acked=self.acked, stall_s=round(blocked_s, 4) if stalled else 0.0, rss_mib=rss_mib())
        self._unacked.append((step, blocks))

    def to_fallback(self, step, records, encoder):
        """Write a step to the fallback file once staging is lost (local).

        ``encoder`` is the encoder of the coded records (stored in the file), or None.
        """
        self.fallback.write_step(step, records, encoder=encoder if any("payload" in r for r in records) else None)
        self.ledger.add(step=step, rank=self.rank, to="fallback", file=self.fallback.path,
                        encoder_version=encoder.version if encoder else 0, bytes=record_bytes(records),
                        rss_mib=rss_mib())

    def _switch_to_fallback(self, reason):
        """All ranks: staging is gone. Replay what it never acknowledged, then write to the fallback file."""
        self.staging_lost = True
        logger.error("producer rank %d: %s; steps go to %s from now on", self.rank, reason, self.fallback.path)
        self._replay_unacked(reason)
        if self._on_lost is not None:
            self._on_lost()

    def _replay_unacked(self, reason):
        """Write the steps sent but never acknowledged by staging (raw, from the replay buffer) to the fallback file."""
        replay = [(step, raw) for step, raw in self._unacked if step > self.acked]
        if replay:
            logger.warning("producer rank %d: %s; steps %d..%d go to %s as well", self.rank, reason, replay[0][0],
                           replay[-1][0], self.fallback.path)
        for step, raw in replay:
            records = [raw_record(name, step, self.rank, raw[name], shape, start)
                       for name, (shape, start, _) in self.variables.items()]
            self.fallback.write_step(step, records)
            self.ledger.add(step=step, rank=self.rank, to="fallback", file=self.fallback.path, encoder_version=0,
                            bytes=int(sum(r.nbytes for r in raw.values())), replayed=True)
        self._unacked.clear()

    # ----------------------------------------------------------------- teardown
    def drain(self):
        """Wait until staging acknowledged the last step sent (collective), then settle the rest.

        Waits at most ``peer_timeout_s`` without progress; steps staging never acknowledged go to
        the fallback file (all of them, and every later one, when staging turns out lost).
        """
        if self.staging_lost:
            return
        state = {}
        if self.subscriber is not None:
            _, state = self._poll_rank0(False, until_step=self.last_sent)
        state = self._bcast_state(state)
        self.acked = state.get("acked", self.acked)
        if state.get("lost"):
            self._switch_to_fallback(state["lost"])
        elif self.acked < self.last_sent:  # staging is there but did not store them all (yet)
            self._replay_unacked(f"at close staging had acknowledged up to step {self.acked} of {self.last_sent}")

    def close(self, status, *, last_step, steps_written):
        """Close the fallback file, then end and close the ledger part (local; call after :meth:`drain`).

        ``status`` (``clean`` or ``interrupted``) goes into the ledger's end line.
        """
        self.fallback.close()
        self.ledger.add(event="end", rank=self.rank, status=status, last_step=last_step, steps_written=steps_written,
                        stalls=self.stalls, stall_s=round(self.stall_s, 3), fallback_steps=self.fallback.steps,
                        staging_lost=self.staging_lost)
        self.ledger.close()

    def close_subscriber(self):
        """Close the model stream's reader (rank 0; a no-op elsewhere)."""
        if self.subscriber is not None:
            self.subscriber.close()
            self.subscriber = None
