"""The blocks' linear layers through oneDNN: a row's output depends on that row alone, the gradients are
F.linear's, and everything the route does not cover is F.linear itself."""
import pytest
import torch
import torch.nn.functional as F

from quee_kit import gemm

needs_onednn = pytest.mark.skipif(not gemm.onednn_available(), reason="no oneDNN in this torch build")


def _layer(k, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.1, torch.randn(n, generator=g)


@needs_onednn
@pytest.mark.parametrize("k,n", [(64, 192), (64, 64), (64, 128), (128, 64), (48, 100)])
def test_rows_do_not_depend_on_their_batch_mates(k, n):
    # the engine runs a sample in other groups than the path cache did: its rows must come out the same
    w, b = _layer(k, n)
    x = torch.randn(37, 17, k, generator=torch.Generator().manual_seed(1))
    full = gemm.linear(x, w, b)
    for lo, hi in [(0, 1), (5, 7), (3, 20), (30, 37)]:
        assert torch.equal(gemm.linear(x[lo:hi], w, b), full[lo:hi])
    flat = x.reshape(-1, k)
    ref = gemm.linear(flat, w, b)
    for lo, hi in [(0, 2), (1, 4), (100, 117), (200, 629)]:   # 2-D, from two rows up
        assert torch.equal(gemm.linear(flat[lo:hi], w, b), ref[lo:hi])


@needs_onednn
def test_values_and_gradients_match_f_linear():
    w, b = _layer(64, 128)
    x = torch.randn(8, 17, 64, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (gemm.linear, F.linear):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = fn(xs, ws, bs)
        (y.square().sum() + y.sum()).backward()
        grads.append((y.detach(), xs.grad, ws.grad, bs.grad))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # the weight and bias gradients are the calls autograd makes for F.linear: the same bits, given the same
    # output gradient
    g = torch.randn(8, 17, 128, generator=torch.Generator().manual_seed(3))
    out = []
    for fn in (gemm.linear, F.linear):
        ws, bs = w.clone().requires_grad_(), b.clone().requires_grad_()
        fn(x, ws, bs).backward(g)
        out.append((ws.grad, bs.grad))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@needs_onednn
def test_only_float32_cpu_products_of_two_rows_or_more_take_onednn(monkeypatch):
    calls = []
    monkeypatch.setattr(gemm, "_onednn", lambda *a: calls.append(1) or F.linear(*a))
    w, b = _layer(64, 32)
    x = torch.randn(4, 64)
    assert torch.equal(gemm.linear(x[:1], w, b), F.linear(x[:1], w, b)) and not calls     # one row
    gemm.linear(x.double(), w.double(), b.double())                                      # float64
    gemm.linear(x.bfloat16(), w.bfloat16(), b.bfloat16())                                # bf16
    assert not calls
    gemm.linear(x, w, b)
    assert calls == [1]
    monkeypatch.setattr(gemm, "_ONEDNN", False)   # QUEE_KIT_ONEDNN=0 or no oneDNN
    gemm.linear(x, w, b)
    assert calls == [1]



@needs_onednn
def test_flop_counter_counts_the_onednn_products_as_f_linear():
    from torch.utils.flop_counter import FlopCounterMode
    w, b = _layer(64, 192)
    x = torch.randn(5, 17, 64)
    counts = []
    for fn in (gemm.linear, F.linear):
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        with FlopCounterMode(display=False) as fc:
            fn(xs, ws, b).sum().backward()
        counts.append(fc.get_total_flops())
    assert counts[0] == counts[1] == 3 * 2 * 5 * 17 * 64 * 192   # forward, input and weight gradients
