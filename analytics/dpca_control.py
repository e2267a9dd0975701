"""The control decisions of a ``delta_ritz`` round, taken by rank 0 and followed by every rank.

Why
---
After each round every rank holds the same decoded sum ``G`` and computes from it, locally, what
decides the shape of the next message: whether to stop (certificate ``<= tol``, or stalled), whether
the next round carries the complement sketch (:func:`.dpca_certificate.wants_sketch`) and, at the
end of a call, the next call's first-round code width (:func:`.dpca_rate.next_first_bits`). These
are floating-point comparisons (an eigendecomposition, norms, a ``log2``). Ranks whose floating
point differs (mixed CPUs or BLAS builds within one job, another thread count) can land on
different sides of a threshold; one rank would then stop while the others wait in the next
exchange (a hang), or send a sketch or a code width the others do not expect (messages misread).

What
----
Every rank computes its decision as before; :func:`agree` packs it into one byte and
:meth:`~.comm_counter.CommCounter.control` broadcasts rank 0's byte, which every rank then follows
(its own is discarded). One byte from rank 0 per round: ``p - 1`` bytes on the wire, counted; not a
round (the baselines' convergence test, a MAX all-reduce per round, is not one either). On one
rank nothing is sent. This makes the ranks agree on the shape of every message and on when to stop;
an identical basis and a sound certificate still need identical arithmetic on every rank (each
rank rotates its own copy of the references with its own eigendecomposition).

Byte layout: bit 0 stop (certified), bit 1 stalled (``patience``), bit 2 sketch in the next round,
bits 3-6 the next call's first-round width minus 8 (0..8).
"""

from __future__ import annotations

from dataclasses import dataclass

from .dpca_rate import MAX_BITS, MIN_BITS


@dataclass(frozen=True)
class Decision:
    """What one round decides: ``stop`` (certified), ``stalled``, ``sketch`` (next round), ``next_bits``."""

    stop: bool
    stalled: bool
    sketch: bool
    next_bits: int

    def pack(self):
        """The decision as one byte (layout in the module docstring).

        Returns
        -------
        int
            0..127.

        Raises
        ------
        ValueError
            If ``next_bits`` is outside 8..16.
        """
        if not MIN_BITS <= self.next_bits <= MAX_BITS:
            raise ValueError(f"dpca_control.Decision: next_bits must be {MIN_BITS}..{MAX_BITS}, got {self.next_bits!r}")
        return int(self.stop) | int(self.stalled) << 1 | int(self.sketch) << 2 | (self.next_bits - MIN_BITS) << 3

    @classmethod
    def unpack(cls, byte):
        """Inverse of :meth:`pack`.

        Parameters
        ----------
        byte : int or numpy.uint8

        Returns
        -------
        Decision
        """
        byte = int(byte)
        return cls(stop=bool(byte & 1), stalled=bool(byte >> 1 & 1), sketch=bool(byte >> 2 & 1),
                   next_bits=MIN_BITS + (byte >> 3 & 15))

    @property
    def ends(self):
        """True when the call ends after this round."""
        return self.stop or self.stalled


def agree(counter, decision):
    """Rank 0's :class:`Decision` on every rank (collective over ``counter.comm``; one byte from rank 0).

    Parameters
    ----------
    counter : CommCounter
    decision : Decision
        This rank's own decision.

    Returns
    -------
    Decision
        Rank 0's (on one rank: ``decision`` itself).
    """
    return Decision.unpack(counter.control([decision.pack()])[0])
