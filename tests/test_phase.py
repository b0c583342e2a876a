"""train.passage_phase (aits/passage.py): the reference lands on the rollout's end time and agrees with REBOUND's
IAS15 there, its error falls as its step squared; the phase term's slope in the end time is the reference's own
motion; the term's gradient joins the passage objective's with its weight."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import rebound
import torch

from aits import Config, ConfigError, NormScales, Stepper, passage_gradient
from aits.passage import phase_rows, reference_ends, rollout
from aits.physics import kepler_ic

from helpers import broken_compile, classical_model, factor_cfg, kepler_samples, perturbed_model

PHASE_CFG = dict(recursive=True, symmetric_iterations=0, max_modulation=3.0, init_factor=0.01)


def _starts():
    """A Kepler orbit e = 0.9 at pericentre, mass ratio 0.3, and the Pythagorean three-body problem (Burrau 1913;
    Szebehely & Peters 1967, AJ 72, 876: masses 3, 4, 5 at rest at (1, 3), (-2, -1), (1, -1), G = 1), in 3-D."""
    m, x, v, _ = kepler_ic(0.9, 1.0, mass=[1.0, 0.3], dim=3)
    M = np.zeros((2, 3))
    X = np.zeros((2, 3, 3))
    V = np.zeros((2, 3, 3))
    M[0, :2], X[0, :2], V[0, :2] = m, x, v
    M[0, 2], X[0, 2] = 0.0, [50.0, 0.0, 0.0]  # a massless padding body far out, as mixtures pad systems
    M[1] = [3.0, 4.0, 5.0]
    X[1, :, :2] = [[1.0, 3.0], [-2.0, -1.0], [1.0, -1.0]]
    return M, X, V


def _ias15(m, x, v, t):
    sim = rebound.Simulation()
    sim.integrator = "ias15"
    for k in range(len(m)):
        if m[k] > 0:
            sim.add(m=m[k], x=x[k, 0], y=x[k, 1], z=x[k, 2], vx=v[k, 0], vy=v[k, 1], vz=v[k, 2])
    sim.integrate(t)
    return np.array([[p.x, p.y, p.z] for p in sim.particles])


def test_reference_lands_on_the_time_and_converges_to_ias15():
    cfg = factor_cfg(**PHASE_CFG)
    stepper = Stepper(cfg, NormScales())
    m, x, v = _starts()
    T = torch.tensor([2.3, 1.2], dtype=torch.float64)  # past pericentre (period 2 pi / sqrt(1.3)); the first
    errors = {}                                         # close approach of the Pythagorean problem at t ~ 1.9
    for eta in (0.004, 0.002):
        xr, vr = reference_ends(stepper, m, x, v, T, eta, 100_000)
        assert torch.isfinite(xr).all() and torch.isfinite(vr).all()
        errors[eta] = []
        for b in range(2):
            massive = m[b] > 0
            truth = _ias15(m[b], x[b], v[b], float(T[b]))
            size = np.linalg.norm(truth[0] - truth[1])
            errors[eta].append(np.abs(xr[b].numpy()[massive] - truth).max() / size)
    assert max(errors[0.002]) < 1e-4, errors
    for b in range(2):  # kick-drift-kick: the error falls as the step squared
        assert 3.0 < errors[0.004][b] / errors[0.002][b] < 5.0, errors
    # a row that cannot reach its time within max_steps is NaN, the others are unchanged
    far = torch.tensor([2.3, 500.0], dtype=torch.float64)
    xr, _ = reference_ends(stepper, m, x, v, far, 0.004, 5000)
    assert torch.isnan(xr[1]).all()
    torch.testing.assert_close(xr[0], reference_ends(stepper, m[:1], x[:1], v[:1], far[:1], 0.004, 5000)[0][0])


def test_phase_term_slope_in_the_end_time_is_the_references_motion():
    """d(phase row)/dT at a fixed end position equals the finite difference of the row against references
    recomputed at T +- dT: ending earlier or later on the same path counts as the error it is."""
    cfg = factor_cfg(**PHASE_CFG)
    stepper = Stepper(cfg, NormScales())
    m, x, v = _starts()
    T0 = torch.tensor([2.3, 1.2], dtype=torch.float64)
    x_end = reference_ends(stepper, m, x, v, T0 * 1.001, 0.002, 100_000)[0]  # a rule that runs ahead
    mt, xt = torch.as_tensor(m), torch.as_tensor(x)
    tau0 = torch.ones(2, dtype=torch.float64)
    T = T0.clone().requires_grad_(True)
    xr, vr = reference_ends(stepper, m, x, v, T, 0.002, 100_000)
    rows = phase_rows(x_end, xr, vr, mt, xt, T, tau0)
    slope, = torch.autograd.grad(rows.sum(), T)
    h = 1e-5
    fd = []
    for s in (1, -1):
        Ts = T0 + s * h
        fd.append(phase_rows(x_end, *reference_ends(stepper, m, x, v, Ts, 0.002, 100_000), mt, xt, Ts, tau0))
    fd = (fd[0] - fd[1]) / (2 * h)
    assert torch.all(slope < 0)  # ending later, closer to where the fast rule already is
    torch.testing.assert_close(slope, fd, rtol=1e-3, atol=0)
    # the value: the mean over the massive bodies of the position error over the nearest-neighbour distance
    d = np.array([np.linalg.norm(x[0, 0] - x[0, 1])] * 2)
    want = np.linalg.norm((x_end - xr).detach().numpy()[0, :2], axis=-1) / d
    assert float(rows[0].detach() + 3 * torch.log(T0[0])) == pytest.approx(math.log(want.mean()), rel=1e-12)


def test_phase_weight_adds_its_terms_gradient():
    """The gradient with passage_phase lambda is the plain passage gradient plus lambda x the gradient of the
    mean phase row, computed here from the rollouts' own ends and references; it needs the factor rule."""
    base = factor_cfg(**PHASE_CFG).to_dict()
    samples = kepler_samples([0.5, 0.95])
    cfgs = {lam: Config.from_dict({**base, "train": {"passage": True, "passage_steps": 80, "passage_batch": 2,
                                                     "passage_phase": lam}}) for lam in (0.0, 2.0)}
    got = {lam: passage_gradient(perturbed_model(c), samples, Stepper(c, NormScales()), c,
                                 np.random.default_rng(0)) for lam, c in cfgs.items()}
    assert "passage/phase" not in got[0.0][1]
    assert 0 < got[2.0][1]["passage/phase_error"] < 0.5
    cfg = cfgs[2.0]
    model, stepper = perturbed_model(cfg), Stepper(cfg, NormScales())
    idx = np.random.default_rng(0).choice(2, size=2, replace=False)  # passage_gradient's draw of the states
    start = (samples.m[idx], samples.x[idx], samples.v[idx])
    _, T, tau0, x_end = rollout(model, stepper, *start, 80, with_end=True)
    xr, vr = reference_ends(stepper, *start, T, 0.01 / cfg.train.passage_phase_refine, 100_000)
    rows = phase_rows(x_end, xr, vr, torch.as_tensor(start[0]), torch.as_tensor(start[1]), T, tau0)
    assert got[2.0][1]["passage/phase"] == pytest.approx(float(rows.detach().mean()), rel=1e-9)
    (2.0 * rows.mean()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[2.0][0][name] - got[0.0][0][name], p.grad, rtol=1e-6,
                                   atol=1e-9 * float(p.grad.abs().max()))
    with pytest.raises(ConfigError, match="train.passage_phase"):
        Config.from_dict({}, ["train.passage_phase=1"])


def test_reference_falls_back_to_eager_where_compiling_fails(monkeypatch):
    cfg = factor_cfg(**PHASE_CFG)
    compiled = Config.from_dict(cfg.to_dict(), ["train.compile_rollout=true"])
    m, x, v = _starts()
    T = torch.tensor([0.7, 0.4], dtype=torch.float64)
    eager = reference_ends(Stepper(cfg, NormScales()), m, x, v, T, 0.004, 10_000)

    monkeypatch.setattr(torch, "compile", broken_compile)
    stepper = Stepper(compiled, NormScales())
    with pytest.warns(UserWarning, match=r"compile failed \(RuntimeError: InvalidCxxCompiler.*phase references run"):
        first = reference_ends(stepper, m, x, v, T, 0.004, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, then eager for good
        again = reference_ends(stepper, m, x, v, T, 0.004, 10_000)
    for a, b, c in zip(eager, first, again):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_phase_hinge_counts_only_the_drift_beyond_the_classical_rule():
    """train.passage_phase_hinge: the term is the mean of max(0, row - the classical rule's row), the classical
    rule's rows from the bounded factor at eta0 (whatever the hidden layers) with its own end time and reference;
    the classical rule itself has no excess; it needs the phase term and the bounded factor."""
    base = factor_cfg(**PHASE_CFG).to_dict()
    samples = kepler_samples([0.5, 0.8, 0.95])
    cfg = Config.from_dict({**base, "train": {"passage": True, "passage_steps": 100, "passage_batch": 3,
                                              "passage_phase": 2.0, "passage_phase_hinge": True}})
    plain = Config.from_dict(cfg.to_dict(), ["train.passage_phase=0", "train.passage_phase_hinge=false"])
    model = perturbed_model(cfg, scale=0.5)
    grads, metrics = passage_gradient(model, samples, Stepper(cfg, NormScales()), cfg, np.random.default_rng(0))
    plain_grads, _ = passage_gradient(model, samples, Stepper(plain, NormScales()), plain, np.random.default_rng(0))
    idx = np.random.default_rng(0).choice(3, size=3, replace=False)
    start = (samples.m[idx], samples.x[idx], samples.v[idx])
    other = classical_model(cfg)  # other hidden layers, last layer zeroed: the classical rule
    eta = 0.01 / cfg.train.passage_phase_refine
    mt, xt = torch.as_tensor(start[0]), torch.as_tensor(start[1])

    def rows_of(rule):
        stepper = Stepper(cfg, NormScales())
        _, T, tau0, x_end = rollout(rule, stepper, *start, 100, with_end=True)
        return phase_rows(x_end, *reference_ends(stepper, *start, T, eta, 100_000), mt, xt, T, tau0)

    with torch.no_grad():
        classical = rows_of(other)
    got = rows_of(model)
    worse = got.detach() > classical
    assert 0 < int(worse.sum()) < 3, (got, classical)  # the perturbed rule drifts more on some orbits, not all
    assert metrics["passage/phase_worse"] == pytest.approx(float(worse.double().mean()))
    assert metrics["passage/phase"] == pytest.approx(float(torch.relu(got.detach() - classical).mean()), rel=1e-9)
    model.zero_grad(set_to_none=True)
    (2.0 * torch.relu(got - classical).mean()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name] - plain_grads[name], p.grad, rtol=1e-6,
                                   atol=1e-9 * float(p.grad.abs().max()))
    _, flat = passage_gradient(other, samples, Stepper(cfg, NormScales()), cfg, np.random.default_rng(0))
    assert flat["passage/phase"] == 0.0 and flat["passage/phase_worse"] == 0.0
    with pytest.raises(ConfigError, match="train.passage_phase_hinge"):
        Config.from_dict(base, ["train.passage_phase_hinge=true"])
