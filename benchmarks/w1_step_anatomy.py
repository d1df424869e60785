"""Where a W1 vectorized step's time goes, and why the 5.5x fit target is out of reach on CPU.

W1's client step (2NN 784-200-200-10, B = 10) for K stacked clients on one torch thread, written
out by hand as the recorded graph runs it: batched forward matmuls, the backward, and each weight
gradient fused into its update (``baddbmm_``). Prints (1) each matmul alone, in microseconds and
GFLOP/s against a 2048 x 2048 fp32 matmul's peak timed here; (2) the whole hand-written step;
(3) a "delayed first-layer update" variant: the first layer's weights are materialised only every
r steps, its forward for r steps taken as one matmul from the stale weights plus a Gram-matrix
correction (``X_t W^T - lr sum_s (X_t X_s^T) G_s``), the r rank-B updates as one rank-rB update.
It is the same arithmetic in another order (max |diff| printed); the ratio says whether fewer,
larger matmuls pay for the corrections. (4) the forward matmul in bfloat16, the one faster
kernel found (it changes the numbers, so fedloom does not use it).

Run: ``python benchmarks/w1_step_anatomy.py --clients 5``
"""

from __future__ import annotations

import fedloom  # noqa: F401  # isort: skip  (before torch: fedloom.core.openmp)

import argparse
import time
from collections.abc import Callable

import torch

D, H, C, B = 784, 200, 10, 10
LR = 0.05


def clock(fn: Callable[[], object], reps: int) -> float:
    """Best-of-3 mean seconds of ``fn`` over ``reps`` calls, after a warm-up."""
    for _ in range(max(3, reps // 10)):
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def init(k: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(k, H, D, generator=gen) * 0.03, torch.zeros(k, 1, H),
            torch.randn(k, H, H, generator=gen) * 0.07, torch.zeros(k, 1, H),
            torch.randn(k, C, H, generator=gen) * 0.07, torch.zeros(k, 1, C)]


def upper(h1: torch.Tensor, p: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Layers 2-3 forward and backward, their updates and the first bias's; the gradient of the
    first layer's pre-activation (B x H per client)."""
    _, b1, w2, b2, w3, b3 = p
    a1 = h1.relu()
    h2 = torch.baddbmm(b2, a1, w2.transpose(1, 2))
    a2 = h2.relu()
    prob = torch.baddbmm(b3, a2, w3.transpose(1, 2)).softmax(-1)
    g3 = prob.scatter_add_(2, y.unsqueeze(2), torch.full((*y.shape, 1), -1.0)) / B
    g2 = torch.bmm(g3, w3) * (h2 > 0)
    g1 = torch.bmm(g2, w2) * (h1 > 0)
    w3.baddbmm_(g3.transpose(1, 2), a2, alpha=-LR)
    b3.sub_(g3.sum(1, keepdim=True), alpha=LR)
    w2.baddbmm_(g2.transpose(1, 2), a1, alpha=-LR)
    b2.sub_(g2.sum(1, keepdim=True), alpha=LR)
    b1.sub_(g1.sum(1, keepdim=True), alpha=LR)
    return g1


def plain(p: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
    """Every step as the recorded graph runs it."""
    for t in range(x.shape[1] // B):
        xt, yt = x[:, t * B:(t + 1) * B], y[:, t * B:(t + 1) * B]
        g1 = upper(torch.baddbmm(p[1], xt, p[0].transpose(1, 2)), p, yt)
        p[0].baddbmm_(g1.transpose(1, 2), xt, alpha=-LR)


def delayed(p: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, r: int) -> None:
    """The same steps with the first layer's weights written every ``r`` steps."""
    k, steps = x.shape[0], x.shape[1] // B
    grads = torch.empty(k, r * B, H)
    for w0 in range(0, steps, r):
        n = min(r, steps - w0)
        xw = x[:, w0 * B:(w0 + n) * B]
        stale = torch.bmm(xw, p[0].transpose(1, 2))
        gram = torch.bmm(xw, xw.transpose(1, 2))
        for j in range(n):
            h1 = stale[:, j * B:(j + 1) * B] + p[1]
            if j:
                h1.baddbmm_(gram[:, j * B:(j + 1) * B, :j * B], grads[:, :j * B], alpha=-LR)
            grads[:, j * B:(j + 1) * B] = upper(h1, p, y[:, (w0 + j) * B:(w0 + j + 1) * B])
        p[0].baddbmm_(grads[:, :n * B].transpose(1, 2), xw, alpha=-LR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5, help="K: clients in one part")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    k, steps = args.clients, args.steps
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(k, steps * B, D, generator=gen)
    y = torch.randint(0, C, (k, steps * B), generator=gen)
    big = torch.randn(2048, 2048)
    peak = 2 * 2048 ** 3 / clock(lambda: big @ big, 5) / 1e9
    print(f"1 thread, K = {k} clients, B = {B}; fp32 matmul peak {peak:.0f} GFLOP/s\n")
    w1, w2 = torch.randn(k, H, D), torch.randn(k, H, H)
    xt, g, a = x[:, :B].contiguous(), torch.randn(k, B, H), torch.randn(k, B, H)
    ops = {"layer 1 forward (B x 784 @ 784 x 200)":
           (lambda: torch.bmm(xt, w1.transpose(1, 2)), D * H),
           "layer 1 update (rank-B baddbmm_)":
           (lambda: w1.baddbmm_(g.transpose(1, 2), xt, alpha=-1e-9), D * H),
           "layer 2 forward": (lambda: torch.bmm(a, w2.transpose(1, 2)), H * H),
           "layer 2 input gradient": (lambda: torch.bmm(g, w2), H * H),
           "layer 2 update": (lambda: w2.baddbmm_(g.transpose(1, 2), a, alpha=-1e-9), H * H)}
    total = 0.0
    for name, (fn, size) in ops.items():
        sec = clock(fn, 300)
        total += sec
        print(f"{name:42s} {sec * 1e6:7.1f} us  {2 * k * B * size / sec / 1e9:5.0f} GFLOP/s")
    step = clock(lambda: plain(init(k), x, y), 3) / steps
    print(f"{'the matmuls above, summed':42s} {total * 1e6:7.1f} us")
    print(f"{'whole hand-written step':42s} {step * 1e6:7.1f} us ({step / k * 1e6:.0f} us per "
          f"client step)\n")
    reference = init(k)
    plain(reference, x, y)
    for r in (2, 4, 6, 10, 20):
        sec = clock(lambda r=r: delayed(init(k), x, y, r), 3) / steps  # type: ignore[misc]
        got = init(k)
        delayed(got, x, y, r)
        diff = max(float((u - v).abs().max()) for u, v in zip(reference, got))
        print(f"delayed first-layer update, r = {r:2d}: {step / sec:4.2f}x the step "
              f"(max |diff| {diff:.1e})")
    xb, wb = xt.bfloat16(), w1.bfloat16()
    sec = clock(lambda: torch.bmm(xb, wb.transpose(1, 2)), 300)
    print(f"\nlayer 1 forward in bfloat16: {sec * 1e6:.1f} us")


if __name__ == "__main__":
    main()
