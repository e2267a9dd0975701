"""The state of temporal prediction shared by whoever encodes blocks (producers in situ, staging in
transit): the last reconstruction of each block, which the decoder also holds, and the keyframe count.

Reconstructions of a step become references only once the step is complete (:meth:`PredictionChain.end_step`),
so a step that fails half-way never becomes a reference the decoder cannot find.
"""

from __future__ import annotations


class PredictionChain:
    """Previous reconstructions per block and the keyframe schedule.

    Parameters
    ----------
    keyframe_every : int, default=0
        0: every step is coded on its own; ``k > 0``: every k-th encoded step is, the others may
        predict tiles from the previous step (see :func:`~stagelearn.analytics.codec.encode_block`).
        Usually set from the encoder in use before each step.
    """

    def __init__(self, keyframe_every=0):
        self.keyframe_every = int(keyframe_every)
        self._prev, self._pending, self._since_key = {}, {}, 0
        self._predicted = {}

    def keep_prediction(self, key, block, model, prediction):
        """Keep the prediction of block ``key`` made for this step's targets, for its coding
        (:func:`~stagelearn.analytics.step_encode.step_targets` then :func:`~stagelearn.analytics.step_encode.encode_step_block`)."""
        self._predicted[key] = (block, model, prediction)

    def take_prediction(self, key, block, model):
        """The prediction kept for ``key`` if it was made of this very ``block`` with this ``model``, else None
        (taken: a second call returns None)."""
        kept = self._predicted.pop(key, None)
        return kept[2] if kept is not None and kept[0] is block and kept[1] is model else None

    def reference(self, key, shape):
        """``(step, reconstruction)`` to predict block ``key`` from, or ``(None, None)`` on a keyframe,
        for a new block, or when the block's shape changed."""
        if not self.keyframe_every or self._since_key % self.keyframe_every == 0:
            return None, None
        step, prev = self._prev.get(key, (None, None))
        if prev is None or prev.shape != tuple(shape):
            return None, None
        return step, prev

    def record(self, key, step, reconstruction):
        """Keep the decoder's reconstruction of block ``key`` at ``step`` for the next step."""
        if self.keyframe_every:
            self._pending[key] = (int(step), reconstruction)

    def end_step(self):
        """The step is written: its reconstructions become the references of the next one."""
        self._prev, self._pending, self._predicted = self._pending, {}, {}
        self._since_key += 1
