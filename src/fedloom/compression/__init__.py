"""Communication compression: uplink codecs of flat tensors and their wiring into a run.

:mod:`.codecs` is pure torch (encode, decode, bytes on the wire, error feedback), with the
sparsifiers in :mod:`.sparse`, PowerSGD in :mod:`.powersgd`, bit packing in :mod:`.bits`;
:mod:`.payload` is what travels and how a receiver checks it; :mod:`.config` is
``compression.*`` of a run config.
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
from fedloom.compression.payload import Invalid, InvalidPayload
from fedloom.compression.powersgd import PowerSGD

__all__ = ["QSGD", "BFloat16", "Codec", "CompressionConfig", "Encoded", "Float16", "Invalid",
           "InvalidPayload", "PowerSGD", "RandK", "Sign", "TopK", "Uplink", "make_codec",
           "with_feedback"]
