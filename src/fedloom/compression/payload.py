"""What a codec puts on the wire (:class:`Encoded`), the :class:`Codec` protocol, and the
checks a receiver runs on a payload a hostile client could send.

:meth:`Codec.validate` raises :class:`InvalidPayload` with one of the named reasons of
:class:`Invalid` before anything is decoded: wrong tensor names, dtypes or sizes for the
declared length, indices out of range or repeated, non-finite values, norms or scales,
quantisation levels beyond the configured count, set padding bits.

Example:
    >>> enc = Encoded(tensors={"values": torch.zeros(3)}, numel=4)
    >>> try:
    ...     expect(enc, {"values": (torch.float32, 4)})
    ... except InvalidPayload as e:
    ...     print(e.reason.value)
    wrong_shape
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

import torch

from fedloom.core.errors import ClientError

#: float16's largest finite value: float16 values on the wire are clamped to it
FP16_MAX = 65504.0


def to_float16(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float16, clamped to +-:data:`FP16_MAX` (never infinite)."""
    return x.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)


def int64_scalar(value: int) -> torch.Tensor:
    """A version or a round as a package carries it: one int64 (8 bytes)."""
    return torch.tensor(value, dtype=torch.int64)


@dataclass(frozen=True, slots=True, kw_only=True)
class Encoded:
    """A compressed flat tensor: the tensors that would travel and the length it decodes to."""

    tensors: dict[str, torch.Tensor]
    numel: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class Codec(Protocol):
    """A lossy or lossless encoding of a flat float32 tensor."""

    @property
    def name(self) -> str: ...

    def encode(self, x: torch.Tensor, gen: torch.Generator | None) -> Encoded: ...

    def decode(self, enc: Encoded) -> torch.Tensor: ...

    def nbytes(self, numel: int) -> int:
        """The bytes :meth:`encode` produces for ``numel`` values (whatever they are)."""
        ...

    def validate(self, enc: Encoded) -> None:
        """Raise :class:`InvalidPayload` unless ``enc`` is a payload :meth:`encode` could
        have produced for ``enc.numel`` values (checked before :meth:`decode` touches it)."""
        ...


@runtime_checkable
class DecodesValidated(Protocol):
    """A codec whose check and decoding unpack the same thing (top-k's indices, QSGD's
    levels): :meth:`validate_decode` does both and unpacks it once."""

    def validate_decode(self, enc: Encoded) -> torch.Tensor:
        """:meth:`Codec.validate`, then :meth:`Codec.decode` of what the check unpacked."""
        ...


class Invalid(StrEnum):
    """Why a compressed payload was refused."""

    NAMES = "bad_names"  # a tensor missing, or one the codec does not send
    DTYPE = "bad_dtype"  # a tensor of another dtype than the codec sends
    SHAPE = "wrong_shape"  # a tensor's size contradicts the declared length
    INDEX_RANGE = "index_out_of_range"  # a sparse index outside [0, numel)
    INDEX_DUPLICATE = "index_duplicated"  # a sparse index repeated (or out of order)
    NON_FINITE = "non_finite"  # NaN or infinite values, norms or scales
    LEVEL_RANGE = "level_out_of_range"  # a quantisation level beyond the configured count
    BAD_VALUE = "bad_value"  # a negative norm or scale, set padding bits, a bad seed or length


class InvalidPayload(ClientError):
    """A client's compressed update that fails its codec's checks.

    Attributes:
        reason: the named reason.
        detail: what exactly was wrong (the tensor and the value).
    """

    def __init__(self, reason: Invalid, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        ClientError.__init__(self, f"invalid payload ({reason.value}): {detail}", stage="decode")


def refuse_if(bad: bool, reason: Invalid, detail: str) -> None:
    if bad:
        raise InvalidPayload(reason, detail)


def expect_length(enc: Encoded, minimum: int = 0) -> None:
    """The declared length is an int of at least ``minimum``."""
    refuse_if(isinstance(enc.numel, bool) or not isinstance(enc.numel, int)
              or enc.numel < minimum, Invalid.BAD_VALUE,
              f"declared length {enc.numel!r}: must be an int >= {minimum}")


def expect(enc: Encoded, spec: Mapping[str, tuple[torch.dtype, int]]) -> None:
    """``enc`` carries exactly the tensors of ``spec`` (name -> dtype, number of values),
    each one-dimensional (a 0-d tensor counts as one value)."""
    expect_length(enc)
    names, wanted = set(enc.tensors), set(spec)
    refuse_if(names != wanted, Invalid.NAMES,
              f"tensors {sorted(names)}, expected {sorted(wanted)}")
    for name, (dtype, numel) in spec.items():
        t = enc.tensors[name]
        refuse_if(t.dtype != dtype, Invalid.DTYPE, f"{name}: {t.dtype}, expected {dtype}")
        refuse_if(t.dim() > 1 or t.numel() != numel, Invalid.SHAPE,
                  f"{name}: shape {tuple(t.shape)}, expected ({numel},) for {enc.numel} values")


#: half-precision dtypes' exponent bits (all set: infinite or NaN), checked as integers (CPU
#: kernels for half-precision isfinite are several times slower than an integer mask)
_EXPONENT = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def _non_finite(t: torch.Tensor) -> torch.Tensor:
    mask = _EXPONENT.get(t.dtype)
    if mask is None:
        return ~torch.isfinite(t)
    return (t.view(torch.int16) & mask) == mask


def expect_finite(enc: Encoded, *names: str) -> None:
    for name in names:
        bad = _non_finite(enc.tensors[name])
        refuse_if(bool(bad.any()), Invalid.NON_FINITE,
                  f"{name}: {int(bad.sum())} non-finite value(s)")


def expect_non_negative(enc: Encoded, name: str) -> None:
    t = enc.tensors[name]
    refuse_if(bool((t < 0).any()), Invalid.BAD_VALUE,
              f"{name}: negative value {float(t.min())} (norms and scales are >= 0)")


def decode_validated(codec: Codec, enc: Encoded) -> torch.Tensor:
    """``enc`` decoded once ``codec`` has validated it (unpacked once where the codec can:
    :class:`DecodesValidated`)."""
    if isinstance(codec, DecodesValidated):
        return codec.validate_decode(enc)
    codec.validate(enc)
    return codec.decode(enc)


def checked_decode(codec: Codec, enc: Encoded, what: str) -> torch.Tensor:
    """``enc`` decoded once ``codec`` has validated it, refused as :data:`Invalid.NON_FINITE`
    when finite parts still decode to NaN or infinity (a norm times a level that overflows)."""
    decoded = decode_validated(codec, enc)
    refuse_if(not bool(torch.isfinite(decoded).all()), Invalid.NON_FINITE,
              f"{what} decodes to non-finite values ({codec.name})")
    return decoded


__all__ = ["FP16_MAX", "Codec", "DecodesValidated", "Encoded", "Invalid", "InvalidPayload",
           "checked_decode", "decode_validated", "expect", "expect_finite", "expect_length",
           "expect_non_negative", "int64_scalar", "refuse_if", "to_float16"]
