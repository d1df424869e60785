"""Communication compression: uplink codecs of flat tensors and their wiring into a run.

:mod:`.codecs` is pure torch (encode, decode, bytes on the wire, error feedback);
:mod:`.config` is ``compression.*`` of a run config.
"""

from fedloom.compression.codecs import (
    QSGD,
    BFloat16,
    Codec,
    Encoded,
    Float16,
    RandK,
    Sign,
    TopK,
    with_feedback,
)
from fedloom.compression.config import CompressionConfig, Uplink, make_codec

__all__ = ["QSGD", "BFloat16", "Codec", "CompressionConfig", "Encoded", "Float16", "RandK", "Sign",
           "TopK", "Uplink", "make_codec", "with_feedback"]
