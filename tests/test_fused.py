"""The hand-written training step (labkit/fused.py) is autograd's step, bit for bit; and what it
cannot run is left to autograd."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import labkit.fused as fused
import labkit.lit as lit
from labkit.fused import FusedStep
from labkit.models import get_model
from labkit.training import train


class Info:
    num_features, num_classes = 16, 5


def _batches(n, rows=64, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, 16, generator=g), torch.randint(0, 5, (rows,), generator=g)) for _ in range(n)]


def _autograd_step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _run(model, fused: bool, batches, lr=1e-2, weight_decay=0.0, lrs=None):
    torch.manual_seed(1)  # Dropout draws from the global generator
    model = copy.deepcopy(model).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    step = FusedStep.build(model, opt) if fused else None
    assert step is not None or not fused
    losses = []
    for i, (x, y) in enumerate(batches):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[i]  # what a scheduler does between epochs
        losses.append(step(x, y)[0] if fused else _autograd_step(model, opt, x, y))
    return model, opt, torch.stack(losses), torch.get_rng_state()


def _assert_same(a, b):
    (ma, oa, la, ra), (mb, ob, lb, rb) = a, b
    for k, v in ma.state_dict().items():
        assert torch.equal(v, mb.state_dict()[k]), k
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert torch.equal(la, lb)
    assert torch.equal(ra, rb)  # the same random numbers drawn (Dropout masks)


@pytest.mark.parametrize("name", ["jsc-tiny", "jsc-toy", "jsc-custom", "jsc-s"])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_zoo_models_train_bit_for_bit_as_autograd(name, weight_decay):
    torch.manual_seed(0)
    model = get_model(name, Info)
    batches = _batches(25)
    _assert_same(_run(model, False, batches, weight_decay=weight_decay),
                 _run(model, True, batches, weight_decay=weight_decay))


def test_other_chains_and_a_changing_learning_rate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12, bias=False), nn.Dropout(0.5, inplace=True), nn.ReLU(),
                          nn.BatchNorm1d(12, momentum=0.3, eps=1e-3), nn.Linear(12, 5), nn.Dropout(0.0))
    batches = _batches(20, rows=33)  # an odd batch size
    lrs = [1e-2 * 0.8 ** i for i in range(20)]
    _assert_same(_run(model, False, batches, lrs=lrs), _run(model, True, batches, lrs=lrs))


def test_resuming_from_an_autograd_state_continues_bit_for_bit():
    torch.manual_seed(0)
    model = get_model("jsc-custom", Info)
    batches = _batches(12)
    ref = _run(model, False, batches)
    # 6 autograd steps, the state saved and loaded as a checkpoint would be, then 6 fused steps
    head = _run(model, False, batches[:6])
    m2 = copy.deepcopy(model).train()
    m2.load_state_dict(head[0].state_dict())
    opt = torch.optim.Adam(m2.parameters(), lr=1e-2, fused=True)
    opt.load_state_dict(copy.deepcopy(head[1].state_dict()))
    torch.set_rng_state(head[3])
    step = FusedStep.build(m2, opt)
    losses = [step(x, y)[0] for x, y in batches[6:]]
    _assert_same((ref[0], ref[1], ref[2][6:], ref[3]), (m2, opt, torch.stack(losses), torch.get_rng_state()))


def _build(model, opt=None):
    return FusedStep.build(model, opt or torch.optim.Adam(model.parameters(), fused=True))


def test_what_it_cannot_run_is_left_to_autograd():
    tiny = lambda: get_model("jsc-tiny", Info)  # noqa: E731
    assert _build(tiny()) is not None
    hooked = tiny()
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    assert _build(hooked) is None
    frozen = tiny()
    frozen.seq_blocks[0].weight.requires_grad_(False)
    assert _build(frozen) is None
    m = tiny()
    assert _build(m, torch.optim.SGD(m.parameters(), lr=0.1)) is None
    assert _build(m, torch.optim.Adam(m.parameters(), amsgrad=True, fused=True)) is None
    assert _build(m, torch.optim.Adam(m.parameters())) is None  # not the fused kernel
    assert _build(nn.Sequential(nn.Linear(16, 5), nn.Tanh())) is None  # a layer kind it does not know
    assert _build(get_model("jsc-tiny", Info).double()) is None

    class Skip(nn.Module):  # layers it knows, but a forward that is not them in order
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 5)

        def forward(self, x):
            return self.b(x + self.a(x))

    assert _build(Skip()) is None


def test_per_call_fallbacks():
    m = get_model("jsc-tiny", Info).train()
    step = _build(m)
    x = torch.randn(8, 16)
    assert step.usable(x)
    assert not step.usable(x[:1])  # BatchNorm on one row: autograd's path raises PyTorch's error
    m.seq_blocks[0].eval()
    assert not step.usable(x)


def _train_custom(small_data, project):
    torch.manual_seed(0)
    return train("jsc-custom", small_data, max_epochs=2, batch_size=100, learning_rate=1e-2, seed=3,
                 project=project, progress=False, verbose=False)


def test_train_uses_it_and_gets_autograds_result(small_data, monkeypatch):
    built = []
    real = FusedStep.build

    def counting(model, opt):
        step = real(model, opt)
        built.append(step)
        return step

    monkeypatch.setattr(lit.FusedStep, "build", counting)
    fused = _train_custom(small_data, "t-fused")
    assert built and built[0] is not None  # train() took the hand-written step
    monkeypatch.setattr(lit.FusedStep, "build", lambda model, opt: None)
    plain = _train_custom(small_data, "t-autograd")
    assert fused["history"].equals(plain["history"])
    for which in ("best_ckpt", "last_ckpt"):
        a, b = (torch.load(r[which], map_location="cpu", weights_only=True) for r in (fused, plain))
        for k, v in a["state_dict"].items():
            assert torch.equal(v, b["state_dict"][k]), (which, k)
        for i, s in a["optimizer_states"][0]["state"].items():
            for k, v in s.items():
                assert torch.equal(v, b["optimizer_states"][0]["state"][i][k]), (which, i, k)


@pytest.mark.parametrize("feature_major", [False, True])
@pytest.mark.parametrize("integers", [True, False])
def test_dropout_masks_are_the_masks_f_dropout_draws(integers, feature_major, monkeypatch):
    """Every layer's mask, for each of K generators, equals what F.dropout draws from that
    generator's state, layer after layer, and leaves the generator where F.dropout leaves it,
    both through random_ on int64 (ATen's default kernel) and through bernoulli_ itself."""
    if not integers:
        monkeypatch.setattr(fused, "bernoulli_as_integers", lambda: False)
    elif not fused.bernoulli_as_integers():
        pytest.skip("this build's CPU bernoulli_ draws another way (MKL); masks come from bernoulli_ itself")
    ps, widths, K, B = [0.2, 0.5, 0.999, 0.01], [7, 3, 5, 4], 3, 11
    masks = fused.DropoutMasks(ps, widths, K, feature_major)
    gens = [torch.Generator().manual_seed(40 + k) for k in range(K)]
    saved = torch.get_rng_state()
    for _ in range(2):  # the buffers kept from one step to the next
        before = [g.get_state() for g in gens]
        got = masks.draw(B, gens)
        for k in range(K):
            torch.set_rng_state(before[k])
            for p, C, mask in zip(ps, widths, got):
                want = F.dropout(torch.ones(B, C), p, training=True)
                assert torch.equal(mask[k].t() if feature_major else mask[k], want), (p, k)
            assert torch.equal(torch.get_rng_state(), gens[k].get_state())
    torch.set_rng_state(saved)
    with pytest.raises(ValueError, match="gens: 3 distinct generators"):
        masks.draw(B, [gens[0], gens[0], gens[1]])
