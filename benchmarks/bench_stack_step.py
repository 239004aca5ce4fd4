"""One bare stacked training step (labkit.stack._Stack): the hand-written step (``_Stack.step``,
no autograd graph) vs the autograd step it replaced (``forward``, the loss, ``backward()``,
``adam_step``), and a run alone's hand-written step (``labkit.fused.FusedStep``) for scale.

No Lightning, data loading, validation or checkpoints: only what a mini-batch costs. One CPU
thread; the two stacked ways are timed alternately, ``--repeats`` times, and the fastest kept
(the machine may be shared). Both give the same weights bit for bit (tests/test_stack.py).
"masks' bound" is a run alone's step time over what it spends drawing its Dropout masks: a
stacked model must draw each model's masks with those same calls, so no stack of these models
can be faster than that many times running them one by one. "floor" is what the stacked step
spends on the work no stack can share between its models, timed alone with the step's own
kernels and shapes: every model's matrix products (forward, weight and input gradients) and
its Dropout masks; "floor bound" is K runs alone over it, the most the stacked step could gain
if everything else in it cost nothing.

    python benchmarks/bench_stack_step.py
    python benchmarks/bench_stack_step.py --models jsc-tiny --ks 1 6 16
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from tabulate import tabulate

from labkit.fused import FusedStep, dropout_noise
from labkit.models import get_model
from labkit.stack import _losses, _Stack


class Info:
    num_features, num_classes = 16, 5


def autograd_step(stack, x, y, gens):
    per_row, _ = _losses(stack.forward(x, True, gens), y)
    losses = per_row.mean(1)
    stack.grad_flat.zero_()
    losses.sum().backward()
    stack.adam_step()


def hand_written_step(stack, x, y, gens):
    stack.step(x, y, gens)


def ms_per_step(step, steps: int) -> float:
    for _ in range(10):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def stacked_ms(fn, net, k: int, batch: int, steps: int) -> float:
    stack = _Stack([copy.deepcopy(net) for _ in range(k)], [1e-3] * k, [0.0] * k)
    gens = [torch.Generator().manual_seed(j) for j in range(k)]
    x, y = torch.randn(k, 16, batch), torch.randint(0, 5, (batch, k))
    return ms_per_step(lambda: fn(stack, x, y, gens), steps)


def alone_ms(net, batch: int, steps: int) -> float:
    model = copy.deepcopy(net).train()
    step = FusedStep.build(model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True))
    x, y = torch.randn(batch, 16), torch.randint(0, 5, (batch,))
    return ms_per_step(lambda: step(x, y), steps)


def masks_ms(net, batch: int, steps: int) -> float:
    """What a run alone spends per step drawing its Dropout masks (the same calls its step makes).
    A stack must draw each model's masks from its own generator with these very calls to equal
    its run alone, so K times this is a floor under a K-model stacked step."""
    layers = _Stack([net], [0.0], [0.0]).masks  # the chain's Dropout layers that draw, and their widths
    if not layers.ps:
        return 0.0
    bufs = [{} for _ in layers.ps]  # each layer's own memory, as in a run alone's step
    gen = [torch.Generator().manual_seed(0)]
    return ms_per_step(lambda: [dropout_noise(p, batch, 1, c, gen, b)
                                for p, c, b in zip(layers.ps, layers.widths, bufs)], steps)


def floor_ms(net, k: int, batch: int, steps: int) -> float:
    """The stacked step's unshareable work alone: its masks and its matrix products."""
    stack = _Stack([copy.deepcopy(net) for _ in range(k)], [1e-3] * k, [0.0] * k)
    gens = [torch.Generator().manual_seed(j) for j in range(k)]
    products = []
    for i, (kind, m, t, _) in enumerate(stack.ops):
        if kind == "linear":
            w, wt, b = t
            products.append((w, wt, b, torch.randn(k, m.in_features, batch), torch.randn(k, m.out_features, batch), i > 0))

    def work():
        stack.masks.draw(batch, gens)
        for w, wt, b, h, g, need_input in products:
            torch.baddbmm(b, w, h) if b is not None else torch.bmm(w, h)
            torch.bmm(g, h.transpose(1, 2))
            if need_input:
                wt.bmm(g)
    return ms_per_step(work, steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["jsc-tiny", "jsc-custom"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    ap.add_argument("--ks", nargs="+", type=int, default=[1, 6])
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats; the fastest is kept")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        net = get_model(name, Info)
        for batch in args.batch_sizes:
            steps = max(30, 40_000 // batch)
            alone = min(alone_ms(net, batch, steps) for _ in range(args.repeats))
            masks = min(masks_ms(net, batch, steps) for _ in range(args.repeats))
            for k in args.ks:
                best = {}
                for _ in range(args.repeats):
                    for fn in (autograd_step, hand_written_step):
                        t = stacked_ms(fn, net, k, batch, steps)
                        best[fn] = min(best.get(fn, t), t)
                a, h = best[autograd_step], best[hand_written_step]
                floor = min(floor_ms(net, k, batch, steps) for _ in range(args.repeats))
                rows.append({"model": name, "batch": batch, "K": k, "autograd ms/step": round(a, 3),
                             "hand-written ms/step": round(h, 3), "speed-up": round(a / h, 2),
                             "K runs alone (fused) ms": round(k * alone, 3),
                             "stacked vs alone": round(k * alone / h, 2),
                             "masks' bound": round(alone / masks, 2) if masks else "none",
                             "floor ms": round(floor, 3), "floor bound": round(k * alone / floor, 2)})
                print(f"{name} batch {batch} K={k}: autograd {a:.3f} ms, hand-written {h:.3f} ms -> {a / h:.2f}x; "
                      f"{k} runs alone {k * alone:.3f} ms ({k * alone / h:.2f}x)", flush=True)
    print()
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print("masks' bound: a run alone's step time over the time it spends drawing Dropout masks, the most a stack "
          "that draws each model's masks as its run alone does can gain over running the K models one by one")
    print("floor: the stacked step's matrix products and Dropout masks alone (work no stack shares between models); "
          "floor bound: K runs alone over the floor, the most the stacked step could gain if nothing else cost")
    print(f"load average at start {load0:.2f}, at the end {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
