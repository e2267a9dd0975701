"""Stream codec: multilevel interpolation + temporal prediction, error-bounded quantization, static rANS
(default) or, on request, also context-adaptive binary arithmetic coding (whichever is shorter per frame).

See ``docs/codec.md``. Public API: :class:`StreamEncoder`, :class:`StreamDecoder` (stateful, one per
variable), :func:`encode_frame` / :func:`decode_frame` (one frame at a given step).
"""

from .frame import EncodedFrame, StreamFormatError, decode_frame, encode_frame, finish_frame, frame_info
from .interpolation import fit_weights
from .stream import StreamDecoder, StreamEncoder, first_weights, validate_target

__all__ = ["EncodedFrame", "StreamDecoder", "StreamEncoder", "StreamFormatError", "decode_frame", "encode_frame", "finish_frame",
           "first_weights", "fit_weights", "frame_info", "validate_target"]
