"""A hand-written training step for models that are a plain chain of Linear, BatchNorm1d, ReLU
and Dropout layers (every model in the zoo but jsc-trt's quantised variants).

A jsc-tiny step at batch 128 does a few microseconds of arithmetic, yet costs ~0.35 ms on one
CPU thread through autograd and ``torch.optim.Adam(fused=True).step()``: per-operation dispatch,
the autograd engine's graph, and about 0.1 ms of the optimiser's Python bookkeeping per call.
A sweep's longest run is a serial chain of such steps (200 epochs at batch 128 is ~930,000 of
them at full size), so this cost sets how long a whole sweep takes.

:class:`FusedStep` does the same step with about 25 ATen calls and no autograd graph:

* the forward keeps what each layer's backward needs (inputs, outputs, BatchNorm's saved
  statistics, Dropout's mask), drawing Dropout masks exactly as ``F.dropout`` does on the CPU;
* the backward calls the ATen kernels autograd would call for these layers (``addmm``'s
  transposed products, ``threshold_backward``, ``native_batch_norm_backward``,
  ``nll_loss_backward``, ``_log_softmax_backward_data``), in the same order;
* the update is the kernel ``Adam(fused=True)`` runs, ``torch._fused_adam_``, on the
  optimiser's own state tensors with its current learning rate (so checkpoints, resuming and
  learning-rate schedules are as before).

So the weights it produces equal autograd's bit for bit (``tests/test_fused.py`` checks every
layer kind, weight decay, a schedule and resuming). What it cannot run trains through autograd
as before: other layer kinds, hooks, frozen parameters, layers in eval mode, a device other
than the CPU, dtypes other than float32, an optimiser other than plain fused Adam, or a batch of
one row with BatchNorm (autograd's path raises PyTorch's own error for it).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from . import models as zoo
from .runtime import eval_mode

aten = torch.ops.aten
_BN_BACKWARD = aten.native_batch_norm_backward.default
_RELU_BACKWARD = aten.threshold_backward.default
_NLL = aten.nll_loss_forward.default
_NLL_BACKWARD = aten.nll_loss_backward.default
_LOG_SOFTMAX_BACKWARD = aten._log_softmax_backward_data.default
_MEAN, _IGNORE = 1, -100  # F.cross_entropy's reduction="mean" and ignore_index

# Models whose forward applies their leaf modules in registration order (checked on a probe too).
SEQUENTIAL = (zoo.JSC_Tiny, zoo.JSC_Toy, zoo.JSC_Custom, zoo.JSC_S, zoo.JSC_TRT, nn.Sequential)


def leaves(net: nn.Module):
    """``(name, module)`` of the layers, in order, if the model is a chain of layers this module
    and :mod:`labkit.stack` know (Linear, BatchNorm1d with running statistics and a momentum,
    ReLU, Dropout) with float32 CPU parameters; else None."""
    if type(net) not in SEQUENTIAL:
        return None
    out = []
    for name, m in net.named_modules():
        if list(m.children()):
            continue
        kind = type(m)
        if kind is nn.BatchNorm1d:
            if not (m.affine and m.track_running_stats and m.momentum is not None):
                return None
        elif kind not in (nn.Linear, nn.ReLU, nn.Dropout):
            return None
        out.append((name, m))
    params = list(net.parameters())
    if not out or not params or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        return None
    return out


def _hooked(net: nn.Module) -> bool:
    """Any module or parameter hook would be skipped by the hand-written step."""
    g = nn.modules.module
    if (g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks
            or g._global_backward_pre_hooks):
        return True
    for m in net.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return True
    return any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None) for p in net.parameters())


def _plain_adam(opt, params) -> bool:
    """``opt`` is one fused ``torch.optim.Adam`` group over exactly ``params``, with no options
    the fused kernel call below leaves out."""
    if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
        return False
    g = opt.param_groups[0]
    return (g.get("fused") is True and not g.get("amsgrad") and not g.get("maximize") and not g.get("capturable")
            and not g.get("differentiable") and not g.get("decoupled_weight_decay")
            and not isinstance(g["lr"], torch.Tensor) and len(g["params"]) == len(params)
            and all(a is b for a, b in zip(g["params"], params)))


class FusedStep:
    """One training step (forward, cross-entropy, backward, Adam) of a layer chain, by hand.

    ``FusedStep.build(model, optimizer)`` returns one, or None when the model or optimiser is
    one it cannot run (see the module docstring). Call it with a mini-batch ``(x, y)``: it
    updates the model in place, as ``loss.backward(); optimizer.step()`` would, and returns the
    mean loss and the logits (both detached)."""

    def __init__(self, model: nn.Module, optimizer, layers):
        self.model, self.opt, self.layers = model, optimizer, layers
        self.params = list(model.parameters())
        slot = {id(p): i for i, p in enumerate(self.params)}  # a gradient's place in the optimiser's list
        # Each layer as (kind, module, tensors, gradient slots): read once here, not per step
        # (a module attribute lookup costs about as much as a small kernel).
        self.ops = []
        for m in layers:
            if isinstance(m, nn.Linear):
                bias = (m.bias, slot[id(m.bias)]) if m.bias is not None else (None, None)
                self.ops.append(("linear", m, (m.weight, bias[0]), (slot[id(m.weight)], bias[1])))
            elif isinstance(m, nn.BatchNorm1d):
                self.ops.append(("bn", m, (m.weight, m.bias, m.running_mean, m.running_var, m.num_batches_tracked),
                                 (slot[id(m.weight)], slot[id(m.bias)])))
            else:
                # Dropout's tensors: its mask's memory, by batch size (see dropout_noise)
                self.ops.append(("relu", m, (), ()) if isinstance(m, nn.ReLU) else ("dropout", m, {}, ()))
        self.has_bn = any(kind == "bn" for kind, *_ in self.ops)
        self.one = torch.ones(())  # d(loss)/d(loss), as autograd seeds it
        self._state = None  # (the optimiser's state dict, moments, step counts) -- see _adam_state

    @classmethod
    def build(cls, model: nn.Module, optimizer) -> "FusedStep | None":
        found = leaves(model)
        if found is None or _hooked(model):
            return None
        params = list(model.parameters())
        if not all(p.requires_grad for p in params) or not _plain_adam(optimizer, params):
            return None
        layers = [m for _, m in found]
        if {id(p) for m in layers for p in m.parameters(recurse=False)} != {id(p) for p in params}:
            return None  # a parameter outside the layers (used by a custom forward): not a plain chain
        if not _same_forward(model, layers):
            return None
        return cls(model, optimizer, layers)

    def usable(self, x) -> bool:
        """Per call: every layer in training mode, and BatchNorm given more than one row."""
        if self.has_bn and x.shape[0] < 2:
            return False
        return all(m.training for m in self.layers)

    @torch.no_grad()
    def __call__(self, x, y):
        saved, h = [], x
        for op in self.ops:  # forward, keeping what each backward needs
            h, keep = _forward(op, h)
            saved.append(keep)
        lsm = torch.log_softmax(h, 1)
        loss, total = _NLL(lsm, y, None, _MEAN, _IGNORE)
        g = _NLL_BACKWARD(self.one, lsm, y, None, _MEAN, _IGNORE, total)
        g = _LOG_SOFTMAX_BACKWARD(g, lsm, 1, lsm.dtype)
        grads = [None] * len(self.params)
        for i in range(len(self.ops) - 1, -1, -1):  # backward, last layer first
            g = _backward(self.ops[i], saved[i], g, grads, need_input=i > 0)
        self._adam(grads)
        return loss, h

    def _adam(self, grads):
        """What ``Adam(fused=True).step()`` does for one group: count the step, then the kernel."""
        group = self.opt.param_groups[0]
        avgs, sqs, steps = self._adam_state()
        beta1, beta2 = group["betas"]
        steps.add_(1)
        torch._fused_adam_(self.params, grads, avgs, sqs, [], self._steps, amsgrad=False, lr=group["lr"],
                           beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=False, grad_scale=None, found_inf=None)

    def _adam_state(self):
        """The optimiser's moments, and its per-parameter step counts as views into one buffer
        (so one ``add_`` counts a step for all of them; same values, same checkpoint contents).
        Made again whenever the optimiser's state dict is a new one (loading a checkpoint)."""
        state = self.opt.state
        if self._state is None or self._state[0] is not state or not state:
            for p in self.params:
                s = state[p]
                if not s:  # lazy state, as torch.optim.Adam creates it for fused groups
                    s["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            steps = torch.stack([state[p]["step"] for p in self.params])
            for i, p in enumerate(self.params):
                state[p]["step"] = steps[i]
            self._steps = [state[p]["step"] for p in self.params]
            self._state = (state, [state[p]["exp_avg"] for p in self.params],
                           [state[p]["exp_avg_sq"] for p in self.params], steps)
        return self._state[1:]


def _forward(op, h):
    kind, m, t, _ = op
    if kind == "linear":
        w, b = t
        return (torch.addmm(b, h, w.t()) if b is not None else torch.mm(h, w.t())), h
    if kind == "bn":
        w, b, mean, var, count = t
        count.add_(1)  # as BatchNorm1d.forward counts batches in training
        out, saved_mean, saved_invstd = torch.native_batch_norm(h, w, b, mean, var, True, m.momentum, m.eps)
        return out, (h, saved_mean, saved_invstd)
    if kind == "relu":
        out = torch.relu(h)
        return out, out
    if m.p == 0:
        return h, None
    noise = dropout_noise(m.p, h.shape[0], 1, h.shape[1], [torch.default_generator], t)  # the global stream
    noise = noise if noise.dim() == 0 else noise.view(h.shape)
    return h * noise, noise


def dropout_noise(p: float, B: int, K: int, C: int, gens, buffers=None):
    """Dropout's scaled mask ``[K, B, C]`` for K models, as F.dropout makes it on the CPU (ATen's
    _dropout_impl: ``bernoulli_(1 - p)``, then ``div_(1 - p)``), model k's drawn from ``gens[k]``,
    so it is the mask its run alone would draw (:mod:`labkit.stack`; here K = 1 and the global
    generator). ``p >= 1``: a zero, and no random numbers drawn. ``buffers``: a dict to keep
    the mask's memory in from one step to the next (see :class:`DropoutMasks`), one per layer:
    the next draw from the same dict overwrites the mask."""
    if p >= 1:
        return torch.zeros(())
    if buffers is None:
        buffers = {}
    key = ("masks", p, K, C)
    if key not in buffers:
        buffers[key] = DropoutMasks([p], [C], K)
    return buffers[key].draw(B, gens)[0]


class DropoutMasks:
    """All Dropout masks of one training step for K models, drawn together.

    ``ps``, ``widths``: each Dropout layer's probability (0 < p < 1) and width, in the order
    the forward applies them. :meth:`draw` returns each layer's scaled mask, model k's drawn
    from ``gens[k]`` exactly as F.dropout would draw it there, layer after layer (ATen's
    _dropout_impl: ``bernoulli_(1 - p)`` into a contiguous ``[B, C]``, then ``div_(1 - p)``).
    ``feature_major``: masks ``[K, C, B]`` (the stack's layout), else ``[K, B, C]``.

    Where :func:`bernoulli_as_integers` holds (ATen's default CPU kernel), a model's masks for
    all layers come from ONE ``random_`` call on int64, the very 64-bit numbers the layers'
    ``bernoulli_`` calls would draw one after another; then, for all K models at once, the low
    53 bits are compared with the threshold and the result converted and scaled: about 5 ns an
    element in all, where ``bernoulli_`` and ``div_`` take about 11. The conversion writes each
    mask in the layout it is used in, so the multiplications by it in the forward and the
    backward read it contiguously. Elsewhere each layer's mask is drawn by ``bernoulli_``
    itself. ``gens``: K distinct generators. Memory is kept from one step to the next, by batch size."""

    def __init__(self, ps, widths, K: int, feature_major: bool = False):
        self.ps, self.widths, self.K, self.feature_major = [float(p) for p in ps], list(widths), K, feature_major
        self._buffers = {}

    def draw(self, B: int, gens) -> list:
        if not self.ps:
            return []
        if B not in self._buffers:
            self._buffers[B] = self._allocate(B)
        noise, draws, rows, kept = self._buffers[B]
        if len(gens) != self.K or len({id(g) for g in gens}) != self.K:
            raise ValueError(f"gens: {self.K} distinct generators needed, one per model (got {len(gens)})")
        if not bernoulli_as_integers():
            for k, g in enumerate(gens):
                for p, d in zip(self.ps, draws):
                    d[k].bernoulli_(1 - p, generator=g)
            for p, d, n in zip(self.ps, draws, noise):
                d.div_(1 - p)
                if self.feature_major:
                    n.copy_(d.transpose(1, 2))
            return noise
        for row, g in zip(rows, gens):
            row.random_(generator=g)
        whole, parts = draws
        whole.bitwise_and_(_LOW_53)
        for p, d, kp, n in zip(self.ps, parts, kept, noise):
            torch.lt(d, _threshold(1 - p), out=kp)
            n.copy_(kp.transpose(1, 2) if self.feature_major else kp).mul_(_scale(1 - p))  # 1.5x a mul from bool
        return noise

    def _allocate(self, B: int):
        K, widths = self.K, self.widths
        noise = [torch.empty(K, C, B) if self.feature_major else torch.empty(K, B, C) for C in widths]
        if not bernoulli_as_integers():  # drawn into each model's contiguous [B, C]: the masks themselves if batch-major
            draws = [torch.empty(K, B, C) for C in widths] if self.feature_major else noise
            return noise, draws, None, None
        whole = torch.empty(K, B * sum(widths), dtype=torch.int64)  # model k's draws: row k
        parts, o = [], 0
        for C in widths:
            parts.append(whole[:, o:o + B * C].view(K, B, C))
            o += B * C
        kept = [torch.empty(K, B, C, dtype=torch.bool) for C in widths]
        return noise, (whole, parts), whole.unbind(0), kept


# ATen's default CPU bernoulli_(q) draws one 64-bit number r per element (random64, as random_
# on int64 does: r mod 2^63) and keeps the element when the double (r mod 2^53) / 2^53 is below
# q, i.e. when the integer r mod 2^53 is below q * 2^53 (exact: a power of two), which for an
# integer is "below ceil(q * 2^53)".
_LOW_53 = (1 << 53) - 1


def _threshold(q: float) -> int:
    return math.ceil(q * 2.0 ** 53)


@functools.cache
def _scale(q: float):
    """The kept elements' value, 1 / q, rounded as ATen's ``div_`` rounds it in float32."""
    return torch.ones(()).div_(q)


@functools.cache
def bernoulli_as_integers() -> bool:
    """Whether this PyTorch build's CPU ``bernoulli_`` draws as described above, checked once
    per process by drawing both ways from two equal generators: masks and generator states
    must come out equal. MKL builds on Intel CPUs draw Bernoulli masks another way (one seed
    from the generator, then MKL's own stream); there :func:`dropout_noise` calls
    ``bernoulli_`` itself."""
    g1, g2 = torch.Generator().manual_seed(12345), torch.Generator().manual_seed(12345)
    want = torch.empty(4, 257).bernoulli_(0.8, generator=g1).div_(0.8)
    draws = torch.empty(4, 257, dtype=torch.int64).random_(generator=g2)
    got = (draws.bitwise_and_(_LOW_53) < _threshold(0.8)) * _scale(0.8)
    return torch.equal(want, got) and torch.equal(g1.get_state(), g2.get_state())


def _backward(op, keep, g, grads, need_input: bool):
    """Gradient of one layer: its parameters' into ``grads``, its input's returned."""
    kind, m, t, slots = op
    if kind == "linear":
        w, b = t
        # addmm's gradient for its second factor, weight.t() (column-major): autograd computes
        # it as grad.t() @ input, already in the weight's own layout
        grads[slots[0]] = g.t().mm(keep)
        if b is not None:
            grads[slots[1]] = g.sum(0)
        return g.mm(w) if need_input else None
    if kind == "bn":
        w, _, mean, var, _ = t
        h, saved_mean, saved_invstd = keep
        gi, grads[slots[0]], grads[slots[1]] = _BN_BACKWARD(g, h, w, mean, var, saved_mean, saved_invstd, True, m.eps,
                                                          [need_input, True, True])
        return gi
    if kind == "relu":
        return _RELU_BACKWARD(g, keep, 0)
    return g if keep is None else g * keep


def probe_output(model: nn.Module, layers):
    """``(x, y)``: 4 random rows as wide as the chain's first Linear/BatchNorm1d takes, and the
    model's own output on them in eval mode (which leaves BatchNorm's statistics and the random
    number stream alone; every submodule gets its own mode back); None if that forward fails."""
    first = next((m for m in layers if isinstance(m, (nn.Linear, nn.BatchNorm1d))), None)
    if first is None:
        return None
    width = first.in_features if isinstance(first, nn.Linear) else first.num_features
    x = torch.randn(4, width, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad(), eval_mode(model):
            y = model(x)
    except Exception:  # a forward that needs other inputs or shapes
        return None
    return (x, y) if isinstance(y, torch.Tensor) else None


def _same_forward(model: nn.Module, layers) -> bool:
    """The model's forward is its layers in order (compared on :func:`probe_output`'s rows)."""
    probe = probe_output(model, layers)
    if probe is None:
        return False
    x, want = probe
    try:
        with torch.no_grad(), eval_mode(model):
            h = x
            for m in layers:
                h = m(h)
    except Exception:  # layers that do not chain
        return False
    return want.shape == h.shape and torch.equal(want, h)


__all__ = ["FusedStep", "DropoutMasks", "bernoulli_as_integers", "dropout_noise", "leaves", "probe_output", "SEQUENTIAL"]
