"""Rate control of ``delta_ritz``'s messages: the first round's code width (8 to 16 bits) in a step.

Why
---
In a tracking step the basis multiplied in the first round is the previous step's, and the first
round's error is set by how finely the change ``A_r X - Y_r`` (new samples, drift) is coded, not
by the contraction of the power step: on the d = 4096 Gray-Scott tiles a 16-bit first round
lands at 1.7-2.1e-5, the int8 round at 4-5e-3, above the 1e-3 target, and a second round is
needed. Coding that first round with a few more bits reaches the target in one round, in fewer
bytes than two int8 rounds.

What
----
- the ``b``-bit codes themselves are :mod:`.quantized_allreduce`'s (``bits`` argument of its
  encoders, :func:`~.quantized_allreduce.pack` and both exchanges; 8 is the int8 default). Every
  rank uses the same ``b`` in a round (it is derived from quantities all ranks share), so ``b`` is
  not sent.
- :func:`next_first_bits`: the controller. At the end of a warm-started call the first round's
  output is compared with the final basis (identical on all ranks, no communication; used only
  when the final certificate is below a quarter of that difference, so the difference measures
  the first round's error to within 25 %). The next call's first round gets
  ``ceil(log2(error / (target / 2)))`` more (or fewer) bits, within 8..16, unless a previous
  increase did not pay (then the first round is limited by the contraction, not the code: back
  to 8 for good). This chooses the rate only; what is certified is still the certificate.
"""

from __future__ import annotations

import math

MIN_BITS, MAX_BITS = 8, 16


def next_first_bits(rate, bits, first_error, target):
    """The next call's first-round width (8..16) from this call's first-round error at ``bits``.

    Parameters
    ----------
    rate : dict
        The controller's memory (``state["rate"]``; updated in place): ``last`` (bits, error) of
        the previous measured call, ``locked`` once more bits failed to help.
    bits : int
        This call's first-round width.
    first_error : float
        Its first round's error (measured against the final basis).
    target : float

    Returns
    -------
    int
        If the first round is quantization-limited its error halves with every bit (as the
        quantizer's step does), so the width predicted to leave ``<= target / 2`` is
        ``bits + ceil(log2(first_error / (target / 2)))``. If the last increase did not buy at
        least half of the predicted reduction (in log2), the first round is limited by the power
        step's contraction instead; more bits cannot save a round, so the width goes back to 8
        and stays there (``locked``).
    """
    if rate.get("locked") or not (math.isfinite(first_error) and first_error > 0 and target > 0):
        return MIN_BITS if rate.get("locked") else bits
    last = rate.get("last")
    rate["last"] = (bits, first_error)
    if last is not None and bits > last[0] and math.log2(last[1] / first_error) < (bits - last[0]) / 2:
        rate["locked"] = True
        return MIN_BITS
    change = math.ceil(math.log2(first_error / (target / 2)))
    return int(min(max(bits + change, MIN_BITS), MAX_BITS))
