"""The passage objective (aits/passage.py): its rollout is the scoreboard's integrator, it is
scale-free, it trains, and it is off (bit for bit the seed) by default."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aits import Config, ConfigError, NormScales, Samples, Stepper, make_optimizer, passage
from aits import integrators as I
from aits.passage import rollout
from aits.physics import kepler_ic
from aits.policy import FactorStep, NumpyMLP

from test_scoreboard import factor_cfg, perturbed_model


def _kepler_samples(es, a=1.0) -> Samples:
    s = Samples.empty(0, 2, 2, capacity=len(es))
    for i, e in enumerate(es):
        s.m[i], s.x[i], s.v[i], _ = kepler_ic(e, a)
    return s


@pytest.mark.parametrize("k", [0, 1])
def test_rollout_is_the_scoreboard_integrator(k):
    """The differentiable rollout takes the steps the numpy evaluation loop takes, with the same
    energy errors: what training optimises is what the scoreboard measures."""
    cfg = factor_cfg(symmetric_iterations=k)
    model = perturbed_model(cfg)
    stepper = Stepper(cfg, NormScales())
    m, x, v, _ = kepler_ic(0.9, 1.0)
    with torch.no_grad():
        errs, T, tau0 = rollout(model, stepper, m[None], x[None], v[None], 120)
    h = FactorStep(NumpyMLP(model, cfg.model.activation), 0.0)
    method = I.SymmetricPolicy(h, k, "learned") if k else I.PolicyStep(lambda s: h(s.x, s.v, s.a, s.m), "learned")
    run = I.integrate(method, m, x, v, 1e9, max_steps=120)
    assert run.metrics["status"] == "max_steps"
    assert float(T[0]) == pytest.approx(run.trajectory["t"][-1], rel=1e-10)
    e = run.trajectory["E"]
    np.testing.assert_allclose(errs[0].numpy(), np.abs((e[1:] - e[0]) / e[0]), rtol=1e-7, atol=1e-15)
    assert float(tau0[0]) == pytest.approx(I.timescale(x, I.accel(x, m)), rel=1e-12)


def test_objective_is_scale_free():
    """Lengths x L, masses x M: the same relative errors and the same time covered in units of tau0."""
    cfg = factor_cfg()
    model = perturbed_model(cfg)
    stepper = Stepper(cfg, NormScales())
    m, x, v, _ = kepler_ic(0.8, 1.0)
    L, M = 5.0, 0.3
    with torch.no_grad():
        e1, t1, tau1 = rollout(model, stepper, m[None], x[None], v[None], 80)
        e2, t2, tau2 = rollout(model, stepper, (m * M)[None], (x * L)[None], (v * math.sqrt(M / L))[None], 80)
    np.testing.assert_allclose(e2.numpy(), e1.numpy(), rtol=1e-6, atol=1e-14)
    assert float(t2 / tau2) == pytest.approx(float(t1 / tau1), rel=1e-10)
    assert float(t2 / t1) == pytest.approx(math.sqrt(L ** 3 / M), rel=1e-10)


def test_passage_steps_lower_the_objective():
    """A few optimiser steps on one fixed batch lower its objective (it trains what it measures)."""
    cfg = Config.from_dict({**factor_cfg().to_dict(),
                            "train": {"passage_iterations": 1, "passage_steps": 150, "passage_batch": 3, "lr": 3e-3}})
    model = perturbed_model(cfg)
    stepper = Stepper(cfg, NormScales())
    opt = make_optimizer(model, cfg)
    samples = _kepler_samples([0.5, 0.8, 0.95])
    losses = [passage(model, opt, samples, stepper, cfg, np.random.default_rng(0))["passage/loss"] for _ in range(6)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses


def test_off_by_default_and_needs_scale_free_features():
    cfg = factor_cfg()
    assert cfg.train.passage_iterations == 0
    model = perturbed_model(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    out = passage(model, make_optimizer(model, cfg), _kepler_samples([0.5]), Stepper(cfg, NormScales()), cfg, rng)
    assert out == {} and rng.bit_generator.state == state
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ConfigError, match="train.passage_iterations"):
        Config.from_dict({"train": {"passage_iterations": 1}, "features": {"feature_type": "delta_mag"}})
