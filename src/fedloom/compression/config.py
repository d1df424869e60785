"""``compression.*``: which codec the uplink uses, and its options.

Example:
    >>> make_codec(CompressionConfig(uplink=Uplink.TOPK, ratio=0.1)).nbytes(100)
    47
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from fedloom.compression.codecs import QSGD, BFloat16, Codec, Float16, RandK, Sign, TopK
from fedloom.compression.powersgd import PowerSGD
from fedloom.compression.sparse import Values
from fedloom.compression.variates import STORED_EXTRAS
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.validate import Problems

#: algorithms whose uplink is a model whose update may be compressed
UPDATE_UPLINK = frozenset({"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
                           "fednova", "powd"})


class Uplink(StrEnum):
    NONE = "none"
    FP16 = "fp16"
    BF16 = "bf16"
    QSGD = "qsgd"
    TOPK = "topk"
    RANDK = "randk"
    SIGN = "sign"
    POWERSGD = "powersgd"


class DownlinkCoding(StrEnum):
    """How the server sends the model (:mod:`fedloom.compression.downlink`)."""

    NONE = "none"
    FP16 = "fp16"
    DELTA = "delta"


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionConfig:
    """``uplink``: the codec of the clients' updates (none: float32, as trained).
    ``ratio``: the fraction of values top-k and random-k keep. ``levels``: QSGD's levels per
    sign (127 and below travel as 8 bits). ``block``: values per QSGD norm.
    ``error_feedback``: keep what a client could not send and add it to its next update
    (null: on for topk, randk, sign and powersgd, off otherwise). ``block`` is also sign's
    values per scale. ``rank``: PowerSGD's rank per matrix. ``values``: the dtype top-k's and
    random-k's kept values travel in (float32, or float16 with its rounding error fed back).
    ``downlink``: how the model is sent (none: float32; fp16: half precision; delta: 8-bit
    QSGD changes against the model each client last received, see
    :mod:`fedloom.compression.downlink`). ``history``: delta's rounds of changes the server
    keeps (a client further behind gets the whole model)."""

    uplink: Uplink = Uplink.NONE
    ratio: float = 0.01
    levels: int = 127
    block: int = 4096
    error_feedback: bool | None = None
    rank: int = 2
    values: Values = Values.FLOAT32
    downlink: DownlinkCoding = DownlinkCoding.NONE
    history: int = 3

    def __post_init__(self) -> None:
        p = Problems()
        p.check(0 < self.ratio <= 1, "ratio", self.ratio, "must be in (0, 1]")
        p.check(1 <= self.levels <= 32767, "levels", self.levels, "must be in [1, 32767]")
        p.check(self.block >= 1, "block", self.block, "must be >= 1")
        p.check(self.rank >= 1, "rank", self.rank, "must be >= 1")
        p.check(self.values is Values.FLOAT32 or self.uplink in (Uplink.TOPK, Uplink.RANDK),
                "values", self.values.value, "applies to the topk and randk uplinks only")
        p.check(self.history >= 1, "history", self.history, "must be >= 1")
        p.raise_if_any()

    @property
    def enabled(self) -> bool:
        return self.uplink is not Uplink.NONE

    @property
    def feedback(self) -> bool:
        if self.error_feedback is not None:
            return self.error_feedback
        return self.uplink in (Uplink.TOPK, Uplink.RANDK, Uplink.SIGN, Uplink.POWERSGD)


def make_codec(cfg: CompressionConfig, layout: ParamLayout | None = None) -> Codec:
    """The codec ``cfg.uplink`` names (``none`` is not a codec); PowerSGD needs the model's
    ``layout`` (the shapes of its tensors)."""
    match cfg.uplink:
        case Uplink.FP16:
            return Float16()
        case Uplink.BF16:
            return BFloat16()
        case Uplink.QSGD:
            return QSGD(levels=cfg.levels, block=cfg.block)
        case Uplink.TOPK:
            return TopK(ratio=cfg.ratio, values=cfg.values)
        case Uplink.RANDK:
            return RandK(ratio=cfg.ratio, values=cfg.values)
        case Uplink.SIGN:
            return Sign(block=cfg.block)
        case Uplink.POWERSGD:
            if layout is None:
                raise ConfigError("compression.uplink = 'powersgd' needs the model's layout "
                                  "(the shapes of its tensors) to build the codec")
            return PowerSGD.for_layout(layout, rank=cfg.rank)
    raise ValueError(f"compression.uplink = {cfg.uplink.value!r} is not a codec")


#: uplink codecs that compose with secure aggregation: per-client quantisers without state
SECAGG_SOUND = frozenset({Uplink.FP16, Uplink.BF16, Uplink.QSGD})


def check_compression(c: CompressionConfig, p: Problems, *, algorithm: str, topology: bool,
                      secagg: bool) -> None:
    """Record why ``c`` cannot run with the run's ``algorithm``, a ``topology`` or secure
    aggregation (``secagg``), each problem naming its key. Differential privacy always
    composes: the codec runs after the client's clipping and noise (post-processing)."""
    _check_downlink(c, p, algorithm=algorithm, topology=topology, secagg=secagg)
    if not c.enabled:
        return
    key, value = "compression.uplink", c.uplink.value
    supported = UPDATE_UPLINK | STORED_EXTRAS.keys()
    p.check(algorithm in supported, key, value,
            f"algorithm {algorithm} does not send a model update the codec can compress "
            f"(supported: {', '.join(sorted(supported))})")
    p.check(algorithm not in STORED_EXTRAS or c.uplink is not Uplink.POWERSGD, key, value,
            f"powersgd factors the model's matrices; {algorithm} also sends a flat tensor "
            "through the codec (its control variate), so use another codec")
    p.check(not topology, key, value,
            "a topology (hierarchy or gossip) sends aggregates and models between nodes, not "
            "one client update per task, so it is not combined with uplink compression")
    if not secagg:
        return
    p.check(c.uplink in SECAGG_SOUND, key, value,
            "secure aggregation (secagg.enabled) masks every value of a dense update in its "
            "ring: a sparsifier's indices would travel unmasked (showing which coordinates "
            "changed) and its values would be masked densely anyway, and sign and powersgd "
            "need client state; use fp16, bf16 or qsgd (decoded on the client, then "
            "fixed-point in the ring)")
    p.check(not c.feedback, "compression.error_feedback", c.error_feedback,
            "secure aggregation sends every client the same task with no per-client state, "
            "so error feedback (a residual per client) is not combined with it; set "
            "compression.error_feedback=false")


def _check_downlink(c: CompressionConfig, p: Problems, *, algorithm: str, topology: bool,
                    secagg: bool) -> None:
    if c.downlink is DownlinkCoding.NONE:
        return
    key, value = "compression.downlink", c.downlink.value
    p.check(algorithm in UPDATE_UPLINK, key, value,
            f"algorithm {algorithm}'s clients do not send a model update, which the server "
            "moves from the model it sent onto its own float32 model "
            f"(supported: {', '.join(sorted(UPDATE_UPLINK))})")
    p.check(not topology, key, value,
            "a topology (hierarchy or gossip) sends models between nodes of its own; it is "
            "not combined with downlink compression")
    p.check(not secagg, key, value,
            "secure aggregation sends every client one float32 model with nothing else; it is "
            "not combined with downlink compression")
