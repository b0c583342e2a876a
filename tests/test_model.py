"""The dt model: positivity, init_dt, Fourier features, seeded initial weights."""
import math

import pytest
import torch

from aits import DtModel


@pytest.mark.parametrize("activation", ["tanh", "relu", "silu", "sigmoid"])
def test_output_is_positive_dt_per_row(activation):
    model = DtModel(7, [16, 8], activation, dropout=0.1, seed=0).double()
    x = torch.randn(5, 7, dtype=torch.float64) * 100
    dt = model(x)
    assert dt.shape == (5,) and bool((dt >= 1e-12).all())
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 2


def test_init_dt_sets_the_untrained_step():
    model = DtModel(4, [32, 32], init_dt=0.01, seed=1).double()
    dt = model(torch.randn(64, 4, dtype=torch.float64))
    assert torch.allclose(dt, torch.full_like(dt, 0.01), rtol=0.2)


def test_fourier_features_change_the_input_width():
    model = DtModel(3, [8], fourier_scale=2.0, fourier_dim=5, seed=0)
    assert model.net[0].in_features == 10
    assert "fourier_proj" in model.state_dict() and model.fourier_proj.shape == (3, 5)
    x = torch.randn(4, 3)
    z = 2 * math.pi * x @ model.fourier_proj
    h = torch.cat([torch.sin(z), torch.cos(z)], -1)
    torch.testing.assert_close(model(x), torch.nn.functional.softplus(model.net(h))[:, 0] + 1e-12)


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = DtModel(6, [10], seed=4), DtModel(6, [10], seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = DtModel(6, [10], seed=5)
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


@pytest.mark.parametrize("kind", ["softplus", "bounded", "fourier", "relu", "silu", "sigmoid"])
def test_numpy_mlp_equals_the_torch_forward(kind):
    """The evaluation's numpy forward pass is DtModel.forward, the bounded factor (max_modulation) and
    the Fourier features included, on inputs that reach the output's saturated ends."""
    import numpy as np

    from aits.model import NumpyMLP

    act = kind if kind in ("relu", "silu", "sigmoid") else "tanh"
    kw = {"bounded": {"init_dt": 0.02, "max_modulation": 3.0}, "fourier": {"fourier_scale": 0.5, "fourier_dim": 4},
          "softplus": {"init_dt": 0.01}}.get(kind, {})
    model = DtModel(8, [16, 16], act, seed=2, **kw).double().eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():  # outputs across the whole range, not the untrained ~constant
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    feats = torch.randn(64, 8, generator=gen, dtype=torch.float64) * 10.0 ** torch.linspace(-2, 1, 64)[:, None]
    with torch.no_grad():
        want = model(feats).numpy()
    mlp = NumpyMLP(model, act)
    got = np.array([mlp(f) for f in feats.numpy()])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    if kind == "bounded":  # both ends of [g0 / M, g0 * M] reached: the bound is what is compared
        assert got.min() < 0.02 / 2.5 and got.max() > 0.02 * 2.5 and (got >= 0.02 / 3.0 * (1 - 1e-12)).all()
