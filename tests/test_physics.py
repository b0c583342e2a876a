"""Physics against independent references: analytic Kepler orbits and REBOUND."""
import numpy as np
import pytest
import rebound
import torch

from aits.physics import (acceleration, angular_momentum, energy, kepler_ic, leapfrog, load_ic_file, momentum,
                          random_ic, rel_energy_error)


def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def integrate(m, x, v, dt, n):
    X, V, M = t64(x)[None], t64(v)[None], t64(m)[None]
    X1, V1, _ = leapfrog(X, V, M, t64([dt]), 0.0, n_steps=n)
    return X1[0].numpy(), V1[0].numpy(), float(rel_energy_error(energy(X, V, M), energy(X1, V1, M)))


def test_kepler_one_period_returns_and_keeps_energy():
    m, x, v, period = kepler_ic(0.5, 1.0, 1.0, 2)
    n = 4000
    x1, v1, err = integrate(m, x, v, period / n, n)
    sep0, sep1 = x[1] - x[0], x1[1] - x1[0]
    assert np.linalg.norm(sep1 - sep0) < 1e-3 * np.linalg.norm(sep0)
    assert err < 1e-6


def test_leapfrog_is_second_order():
    m, x, v, period = kepler_ic(0.5, 1.0, 1.0, 2)
    errs = []
    for n in (500, 1000):
        x1, _, _ = integrate(m, x, v, period / n, n)
        errs.append(np.linalg.norm((x1[1] - x1[0]) - (x[1] - x[0])))
    ratio = errs[0] / errs[1]
    assert 3.5 < ratio < 4.5, ratio


def _rebound_sim(m, x, v, eps):
    sim = rebound.Simulation()
    sim.G = 1.0
    sim.softening = eps
    for mi, xi, vi in zip(m, x, v):
        sim.add(m=float(mi), x=xi[0], y=xi[1], z=xi[2], vx=vi[0], vy=vi[1], vz=vi[2])
    return sim


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_acceleration_matches_rebound(eps):
    rng = np.random.default_rng(3)
    m = rng.uniform(0.2, 3.0, 5)
    x = rng.normal(0, 1, (5, 3))
    v = rng.normal(0, 0.3, (5, 3))
    sim = _rebound_sim(m, x, v, eps)
    sim.integrator = "leapfrog"
    h = 1e-7
    sim.dt = h
    sim.steps(1)
    # REBOUND's leapfrog is drift-kick-drift: the stored accelerations are a(x + v h/2).
    ref = np.array([[p.ax, p.ay, p.az] for p in sim.particles])
    x_mid = x + v * h / 2
    ours = acceleration(t64(x_mid)[None], t64(m)[None], eps)[0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    assert np.abs(ours).max() > 0.1  # a non-trivial check


def test_energy_matches_rebound_without_softening():
    rng = np.random.default_rng(4)
    m = rng.uniform(0.2, 3.0, 5)
    x = rng.normal(0, 1, (5, 3))
    v = rng.normal(0, 0.3, (5, 3))
    ours = float(energy(t64(x)[None], t64(v)[None], t64(m)[None])[0])
    np.testing.assert_allclose(ours, _rebound_sim(m, x, v, 0.0).energy(), rtol=1e-12)


def test_energy_gradient_matches_finite_difference():
    m, x, v, _ = kepler_ic(0.7, 1.0, 1.0, 2)
    X, V, M = t64(x)[None], t64(v)[None], t64(m)[None]
    dt = t64([0.01]).requires_grad_(True)

    def e1(step):
        X1, V1, _ = leapfrog(X, V, M, step, 0.05, n_steps=3)
        return energy(X1, V1, M, 0.05)[0]

    (grad,) = torch.autograd.grad(e1(dt), dt)
    h = 1e-6
    fd = (e1(t64([0.01 + h])) - e1(t64([0.01 - h]))) / (2 * h)
    np.testing.assert_allclose(float(grad), float(fd), rtol=1e-6)
    assert abs(float(grad)) > 1e-8


def test_zero_separation_pairs_contribute_zero_not_nan():
    x = torch.zeros(1, 3, 2, dtype=torch.float64)
    m = torch.ones(1, 3, dtype=torch.float64)
    a = acceleration(x, m)
    assert torch.equal(a, torch.zeros_like(a))
    assert torch.isfinite(energy(x, x, m)).all()


def test_conserved_quantities_and_batching():
    rng = np.random.default_rng(0)
    systems = [random_ic(4, 3, [1.0, 2.0, 0.5, 1.5], 1.0, 0.3, rng) for _ in range(3)]
    M = t64([s[0] for s in systems])
    X = t64([s[1] for s in systems])
    V = t64([s[2] for s in systems])
    dts = t64([1e-3, 2e-3, 4e-3])
    X1, V1, _ = leapfrog(X, V, M, dts, 0.01, n_steps=20)
    # Leapfrog conserves momentum and angular momentum to round-off.
    np.testing.assert_allclose(momentum(V1, M).numpy(), momentum(V, M).numpy(), atol=1e-12)
    np.testing.assert_allclose(angular_momentum(X1, V1, M).numpy(), angular_momentum(X, V, M).numpy(), atol=1e-12)
    # Each system in the batch steps with its own dt, as if alone.
    for b in range(3):
        Xb, Vb, _ = leapfrog(X[b:b + 1], V[b:b + 1], M[b:b + 1], dts[b:b + 1], 0.01, n_steps=20)
        np.testing.assert_allclose(Xb[0].numpy(), X1[b].numpy(), rtol=0, atol=1e-14)


def test_kepler_ic_follows_spec():
    m, x, v, period = kepler_ic(0.6, 2.0, [1.0, 3.0], 3)
    rp = 2.0 * 0.4
    np.testing.assert_allclose(x[:, 0], [-rp / 2, rp / 2])
    vp = np.sqrt(4.0 * 1.6 / rp)
    np.testing.assert_allclose(v[:, 1], [vp / 2, -vp / 2])
    assert x.shape == (2, 3) and np.all(x[:, 2] == 0)
    np.testing.assert_allclose(period, 2 * np.pi * np.sqrt(8.0 / 4.0))
    # Vis-viva: E_rel = -G M mu / (2a) in the relative frame; total E includes COM motion.
    mu = 3.0 / 4.0
    e_rel = 0.5 * mu * vp ** 2 - 3.0 / rp
    np.testing.assert_allclose(e_rel, -3.0 / (2 * 2.0), rtol=1e-12)


def test_random_ic_has_zero_mean(tmp_path):
    m, x, v = random_ic(6, 2, 1.0, 2.0, 0.5, np.random.default_rng(1))
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-14)
    np.testing.assert_allclose(v.mean(0), 0, atol=1e-14)
    assert m.shape == (6,) and x.std() > 0.5


def test_ic_files_npy_and_text(tmp_path):
    rows = np.array([[1.0, 0.1, 0.2, 0.0, 0.3], [2.0, -0.1, 0.0, 0.1, -0.2], [0.5, 1.0, 1.0, 0.0, 0.0]])
    np.save(tmp_path / "ic.npy", rows)
    np.savetxt(tmp_path / "ic.txt", rows)
    for name in ("ic.npy", "ic.txt"):
        m, x, v = load_ic_file(tmp_path / name)
        np.testing.assert_allclose(m, rows[:, 0])
        np.testing.assert_allclose(x, rows[:, 1:3])
        np.testing.assert_allclose(v, rows[:, 3:5])
    (tmp_path / "bad.txt").write_text("1 2 3 4\n1 2 3 4\n")
    with pytest.raises(ValueError, match="1\\+2D columns"):
        load_ic_file(tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="not found"):
        load_ic_file(tmp_path / "missing.npy")


@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_evaluation_loop_converges_to_rebound_ias15(eps):
    """The evaluation loop's kick-drift-kick (aits.integrators) on a 3-D three-body system approaches
    REBOUND's IAS15 positions at second order, with REBOUND's softening convention."""
    from aits import integrators as I

    rng = np.random.default_rng(8)
    m = np.array([1.0, 0.8, 0.6])
    x = rng.normal(0, 1, (3, 3))
    v = rng.normal(0, 0.3, (3, 3))
    duration = 1.5
    sim = _rebound_sim(m, x, v, eps)
    sim.integrator = "ias15"
    sim.integrate(duration, exact_finish_time=1)
    x_ref = np.array([[p.x, p.y, p.z] for p in sim.particles])
    errs = []
    for steps in (1000, 2000):
        run = I.integrate(I.FixedStep(duration / steps), m, x, v, duration, eps=eps)
        assert run.metrics["status"] == "ok" and run.metrics["end_time"] == pytest.approx(duration, rel=1e-14)
        errs.append(np.linalg.norm(run.trajectory["x"][-1] - x_ref, axis=-1).max())
    assert 3.5 < errs[0] / errs[1] < 4.5, errs
    assert errs[1] < 1e-4 * np.abs(x).max()


def test_rel_energy_error_is_one_definition_for_torch_and_numpy():
    """The evaluation (numpy) and training (torch) read the same relative energy error, bit for bit,
    E0 = 0 included (no division by zero)."""
    rng = np.random.default_rng(4)
    e0, e1 = np.r_[rng.normal(size=20), 0.0], np.r_[rng.normal(size=20), 1e-3]
    got_np = rel_energy_error(e0, e1)
    got_t = rel_energy_error(torch.as_tensor(e0), torch.as_tensor(e1)).numpy()
    assert isinstance(got_np, np.ndarray) and np.array_equal(got_np, got_t)
    assert got_np[-1] == pytest.approx(1e9) and got_np[0] == pytest.approx(abs((e1[0] - e0[0]) / e0[0]), rel=1e-11)


@pytest.mark.parametrize("masses", [[1.0, 1e-3], [1.0, 3.0], [2.0, 2.0]])
def test_kepler_pair_is_at_rest_with_the_orbits_own_energy(masses):
    """The evaluation problems' pairs: centre of mass at rest at the origin, so E is the orbit's energy
    -m1 m2 / (2a), and the relative orbit that of kepler_ic (the same floats for an equal pair)."""
    from aits.physics import kepler_pair

    m, x, v, period = kepler_pair(0.6, 2.0, masses, 3)
    m0, x0, v0, period0 = kepler_ic(0.6, 2.0, masses, 3)
    np.testing.assert_allclose((m[:, None] * x).sum(0), 0.0, atol=1e-15)
    np.testing.assert_allclose((m[:, None] * v).sum(0), 0.0, atol=1e-15)
    np.testing.assert_allclose(x[1] - x[0], x0[1] - x0[0], rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(v[1] - v[0], v0[1] - v0[0], rtol=1e-15, atol=1e-15)
    assert period == period0
    e_tot = float(energy(t64(x)[None], t64(v)[None], t64(m)[None])[0])
    np.testing.assert_allclose(e_tot, -masses[0] * masses[1] / (2 * 2.0), rtol=1e-12)
    if masses[0] == masses[1]:
        assert np.array_equal(x, x0) and np.array_equal(v, v0)
