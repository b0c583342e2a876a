"""Features and history: shapes, ordering, invariance, padding, a hand-computed delta_mag."""
import numpy as np
import pytest
import torch

from aits.features import HistoryBuffer, NormScales, build_features, feature_dim, state_features
from aits.physics import acceleration, kepler_ic, random_ic


def t64(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def test_history_buffer_keeps_last_k_oldest_first_with_zero_padding():
    hb = HistoryBuffer(3, 2, 2)
    hx, hv, hdt = hb.arrays()
    assert hx.shape == (3, 2, 2) and not hx.any() and not hdt.any()
    for k in range(1, 6):
        hb.push(np.full((2, 2), k), np.full((2, 2), -k), 0.1 * k)
        if k == 2:
            _, _, hdt = hb.arrays()
            np.testing.assert_allclose(hdt, [0.0, 0.1, 0.2])  # missing oldest are zero
    hx, hv, hdt = hb.arrays()
    np.testing.assert_allclose(hx[:, 0, 0], [3, 4, 5])
    np.testing.assert_allclose(hv[:, 0, 0], [-3, -4, -5])
    np.testing.assert_allclose(hdt, [0.3, 0.4, 0.5])
    snap = hb.snapshot()
    other = HistoryBuffer(3, 2, 2)
    other.restore(snap)
    for a, b in zip(other.arrays(), hb.arrays()):
        np.testing.assert_array_equal(a, b)
    hb.push(np.zeros((2, 2)), np.zeros((2, 2)), 9.0)
    assert other.arrays()[2][-1] == 0.5  # restored copy is independent
    with pytest.raises(ValueError, match="shape"):
        HistoryBuffer(2, 2, 2).restore(snap)


def _system(seed=0, n=4):
    m, x, v = random_ic(n, 3, np.linspace(0.5, 2.0, n), 1.0, 0.4, np.random.default_rng(seed))
    return t64(m)[None], t64(x)[None], t64(v)[None]


def test_basic_features_in_spec_order():
    m, x, v, _ = kepler_ic(0.5, 1.0, [1.0, 3.0], 2)
    M, X, V = t64(m)[None], t64(x)[None], t64(v)[None]
    sc = NormScales(L0=2.0, V0=3.0, A0=5.0, T0=7.0)
    f = state_features(X, V, M, 0.0, sc, "basic")[0].numpy()
    com = (m[:, None] * x).sum(0) / m.sum()
    vcom = (m[:, None] * v).sum(0) / m.sum()
    r = np.linalg.norm(x - com, axis=1) / 2.0
    s = np.linalg.norm(v - vcom, axis=1) / 3.0
    a = np.linalg.norm(acceleration(X, M)[0].numpy(), axis=1) / 5.0
    d = np.sqrt(np.sum((x[0] - x[1]) ** 2) + 1e-12) / 2.0
    expected = [2, 2, 4.0, r.mean(), r.max(), s.mean(), s.max(), a.mean(), a.max(), d, d]
    np.testing.assert_allclose(f, expected, rtol=1e-12)


def test_rich_features_in_spec_order():
    M, X, V = _system(1)
    eps = 0.05
    f = state_features(X, V, M, eps, NormScales(L0=2.0), "rich")[0].numpy()
    m = M[0].numpy()
    assert f.shape == (23,)
    np.testing.assert_allclose(f[:3], [4, 3, m.sum()])
    np.testing.assert_allclose(f[3:7], [m.mean(), m.min(), m.max(), np.sqrt(np.mean(m ** 2) + 1e-12)])
    np.testing.assert_allclose(f[22], eps / 2.0)
    x = X[0].numpy()
    dist = [np.sqrt(np.sum((x[i] - x[j]) ** 2) + eps ** 2 + 1e-12) / 2.0
            for i in range(4) for j in range(4) if i != j]
    np.testing.assert_allclose(f[19:22], [min(dist), np.mean(dist), max(dist)], rtol=1e-12)


@pytest.mark.parametrize("kind", ["basic", "rich", "delta_mag"])
def test_shapes_and_permutation_invariance(kind):
    K, B = 3, 2
    rng = np.random.default_rng(5)
    M = t64(rng.uniform(0.5, 2, (B, 4)))
    X, V = t64(rng.normal(size=(B, 4, 3))), t64(rng.normal(size=(B, 4, 3)))
    HX, HV = t64(rng.normal(size=(B, K, 4, 3))), t64(rng.normal(size=(B, K, 4, 3)))
    dt, hdt = t64([0.1, 0.2]), t64(rng.uniform(0.01, 0.1, (B, K)))
    sc = NormScales(1.5, 0.7, 2.0, 0.3)
    f = build_features(X, V, M, dt, HX, HV, hdt, 0.01, sc, kind)
    assert f.shape == (B, feature_dim(kind, K))
    perm = torch.tensor([2, 0, 3, 1])
    g = build_features(X[:, perm], V[:, perm], M[:, perm], dt, HX[:, :, perm], HV[:, :, perm], hdt, 0.01, sc, kind)
    torch.testing.assert_close(f, g, rtol=1e-12, atol=1e-12)
    # Each sample's features depend on its own history only.
    one = build_features(X[1:], V[1:], M[1:], dt[1:], HX[1:], HV[1:], hdt[1:], 0.01, sc, kind)
    torch.testing.assert_close(one[0], f[1], rtol=0, atol=0)


def test_state_features_concatenated_oldest_first():
    M, X, V = _system(2)
    K = 2
    HX = torch.stack([X[0] * 0.5, X[0] * 0.8])[None]
    HV = torch.stack([V[0] * 0.5, V[0] * 0.8])[None]
    sc = NormScales()
    f = build_features(X, V, M, t64([0.1]), HX, HV, t64([[0.1, 0.1]]), 0.0, sc, "basic")[0]
    torch.testing.assert_close(f[:11], state_features(HX[:, 0], HV[:, 0], M, 0.0, sc, "basic")[0])
    torch.testing.assert_close(f[22:], state_features(X, V, M, 0.0, sc, "basic")[0])


@pytest.mark.parametrize("kind", ["basic", "rich", "delta_mag"])
def test_zero_padded_history_gives_finite_features(kind):
    M, X, V = _system(3)
    K = 4
    hb = HistoryBuffer(K, 4, 3)
    hx, hv, hdt = hb.arrays()
    for eps in (0.0, 0.1):
        f = build_features(X, V, M, t64([0.0]), t64(hx)[None], t64(hv)[None], t64(hdt)[None], eps,
                           NormScales(), kind)
        assert torch.isfinite(f).all()


def test_delta_mag_hand_computed():
    # Two bodies, one history state; only body 0 moves.
    m = t64([[1.0, 1.0]])
    x_old = t64([[[0.0, 0.0], [2.0, 0.0]]])
    x_new = t64([[[0.0, 1.0], [2.0, 0.0]]])  # body 0 moved 1; separation 2 -> sqrt(5)
    v_old = t64([[[0.0, 0.0], [0.0, 0.0]]])
    v_new = t64([[[3.0, 4.0], [0.0, 0.0]]])  # |dv| = 5 for body 0
    sc = NormScales(L0=2.0, V0=5.0, A0=0.5, T0=0.1)
    f = build_features(x_new, v_new, m, t64([0.05]), x_old[:, None], v_old[:, None], t64([[0.02]]),
                       0.0, sc, "delta_mag")[0].numpy()
    # |a| of each body: 1/r^2 along the separation, with eps -> 1e-6.
    a_old, a_new = 1 / 4.0, 1 / 5.0
    e_old = np.array([1.0, 0.0])
    e_new = np.array([2.0, -1.0]) / np.sqrt(5)
    da = np.linalg.norm(a_new * e_new - a_old * e_old) / 0.5  # same magnitude for both bodies
    rms = lambda y: np.sqrt(np.mean(np.square(y)) + 1e-12)  # noqa: E731
    expected = [0.25, 0.5, rms([0.5, 0.0]), 0.5, 1.0, rms([1.0, 0.0]), da, da, rms([da, da]), 0.05 / 0.1]
    np.testing.assert_allclose(f, expected, rtol=1e-9)


def test_auto_scales():
    m, x, v, _ = kepler_ic(0.0, 1.0, 1.0, 2)  # circular, M = 2: separation 1, relative speed sqrt(2)
    sc = NormScales.from_state(m, x, v)
    h = np.sqrt(0.5)
    np.testing.assert_allclose([sc.L0, sc.V0, sc.A0, sc.T0], [1.0, h, 1.0, 1 / h], rtol=1e-12)
