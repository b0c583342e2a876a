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
