"""Uplink codec throughput: GB/s of float32 input encoded, checked and decoded by each codec,
beside the raw copy speed (``torch.clone`` of the same vector) measured in the same run.

Vectors of the W1 2NN (199,210 values) and the W2 CNN (1,663,370), Gaussian values (an update's
shape of distribution does not change these codecs' work, only top-k's selection a little);
PowerSGD uses the model's own layout. Each figure is the median of ``--reps`` repetitions,
codecs interleaved within a repetition; torch threads pinned to 1, then to all cores.

    .venv/bin/python benchmarks/codec_throughput.py --reps 7

Prints a Markdown table: GB/s = 4 n bytes / seconds (higher is faster); ``x copy`` is the
copy's time over the codec's (1.0 = as fast as copying the input once).
"""

from __future__ import annotations

import fedloom  # noqa: F401  # isort: skip  (before torch: fedloom.core.openmp)

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from fedloom.compression import QSGD, BFloat16, Float16, PowerSGD, RandK, Sign, TopK
from fedloom.compression.payload import Codec
from fedloom.core.layout import ParamLayout
from fedloom.core.threads import torch_threads
from fedloom.models import ModelConfig, model_factory

MODELS = {"2NN": "mlp", "CNN": "cnn"}


def codecs(layout: ParamLayout) -> dict[str, Codec]:
    return {"fp16": Float16(), "bf16": BFloat16(), "qsgd 127 (8 bit)": QSGD(levels=127),
            "qsgd 7 (4 bit)": QSGD(levels=7), "qsgd 1 (2 bit)": QSGD(levels=1),
            "topk 1%": TopK(ratio=0.01), "randk 1%": RandK(ratio=0.01), "sign": Sign(),
            "powersgd r2": PowerSGD.for_layout(layout, rank=2)}


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(layout: ParamLayout, reps: int) -> dict[str, list[float]]:
    """Median seconds of copy, and of each codec's encode, validate and decode."""
    x = torch.randn(layout.size, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    chosen = codecs(layout)
    times: dict[str, list[list[float]]] = {name: [[], [], []] for name in chosen}
    copies: list[float] = []
    for _ in range(reps + 1):  # the first repetition warms up and is dropped
        copies.append(seconds(x.clone))
        for name, codec in chosen.items():
            enc = codec.encode(x, gen)
            times[name][0].append(seconds(lambda c=codec: c.encode(x, gen)))
            times[name][1].append(seconds(lambda c=codec, e=enc: c.validate(e)))
            times[name][2].append(seconds(lambda c=codec, e=enc: c.decode(e)))
    out = {"copy": [statistics.median(copies[1:])] * 3}
    out.update({name: [statistics.median(t[1:]) for t in ts] for name, ts in times.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print("| model (values) | threads | codec | encode GB/s | validate GB/s | decode GB/s "
          "| encode x copy | decode x copy |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        net = model_factory(ModelConfig(name=MODELS[model]), (1, 28, 28), 10)()
        layout = ParamLayout.from_module(net)
        gb = 4 * layout.size / 1e9
        for threads in sorted({1, cores}):
            with torch_threads(threads):
                result = measure(layout, args.reps)
            copy = result["copy"][0]
            for name, (enc, val, dec) in result.items():
                print(f"| {model} ({layout.size:,}) | {threads} | {name} | {gb / enc:.2f} | "
                      f"{gb / val:.2f} | {gb / dec:.2f} | {copy / enc:.2f} | {copy / dec:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
