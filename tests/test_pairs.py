"""One pass over the pairs (aits.integrators.accel_pairs): the force evaluation hands its squared separations to the
step rules' timescales and features, and a fully held range check skips the network. Both must change no step:
every rule steps to the last bit as when it computes everything itself."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from aits import integrators as I
from aits.features import scale_free_numpy
from aits.policy import learned_methods
from aits.ranges import FeatureRanges
from aits.steprules import TIMESCALES, pair_r2
from helpers import ETA0, M, bounded_cfg, checkpoint_with_box, wild_model


def cluster(n: int = 12, massless: int = 0, seed: int = 5):
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.5, 1.5, n) / n
    m[:massless] = 0.0
    return m, rng.normal(size=(n, 3)), 0.3 * rng.normal(size=(n, 3))


def digest(run: I.Run) -> str:
    t = run.trajectory
    return hashlib.sha1(t["x"].tobytes() + t["v"].tobytes() + t["dt"].tobytes()).hexdigest()


def test_accel_pairs_is_accel_and_the_separations():
    m, x, _ = cluster()
    a, q = I.accel_pairs(x, m, 0.1)
    assert np.array_equal(a, I.accel(x, m, 0.1))
    d = x[None] - x[:, None]
    np.testing.assert_allclose(q, (d * d).sum(-1), rtol=1e-14, atol=0)
    assert np.all(np.diag(q) == 0.0) and np.array_equal(pair_r2(x), q)
    given = pair_r2(x, q)
    given[0, 1] = -1.0  # the caller's copy: the force's array is not written
    assert q[0, 1] > 0


def without_pairs(h):
    """The same step function, hidden behind a lambda that does not take the pairs (the rule computes its own)."""
    return lambda x, v, a, m: h(x, v, a, m)


@pytest.mark.parametrize("timescale", ["nn", "blend", "soft_blend", "prs_lean"])
def test_classical_rules_given_the_pairs_step_to_the_bit(timescale):
    m, x, v = cluster()
    eps = 0.05
    rec = I.RecursiveAdaptive(0.02, timescale, eps, clip=1.2)
    sym = I.SymmetricAdaptive(0.03, 2, timescale, eps)
    exp = I.Adaptive(0.02, timescale, eps)
    assert rec.h.takes_r2 and sym.h.takes_r2
    plain = {"rec": I.RecursivePolicy(without_pairs(rec.h), "rec", 1.2),
             "sym": I.SymmetricPolicy(without_pairs(sym.h), 2),
             "exp": I.PolicyStep(lambda s: 0.02 * TIMESCALES[timescale](s.x, s.v, s.a, s.m, eps))}
    for name, method in {"rec": rec, "sym": sym, "exp": exp}.items():
        runs = [I.integrate(mm, m, x, v, 0.3, eps=eps) for mm in (method, plain[name])]
        assert runs[0].metrics["steps"] > 10
        assert digest(runs[0]) == digest(runs[1]), name


@pytest.mark.parametrize("massless", [0, 2])
def test_the_learned_rule_given_the_pairs_steps_to_the_bit(massless):
    """A range-checked soft-blend rule on a softened 12-body cluster (numpy features; with two massless bodies,
    which the features leave out), its box cut so that the check acts on part of the run: the recursion and the
    time-symmetric form step as the same rule computing its own separations."""
    cfg = bounded_cfg("soft_blend")
    model = wild_model(cfg, 0.5)
    m, x, v = cluster(massless=massless)
    eps = 0.02
    a = I.accel(x, m, eps)
    f0 = scale_free_numpy(x, v, a, m, eps, "soft_blend")[0]
    box = FeatureRanges(f0 - 0.02 * np.abs(f0), f0 + 0.02 * np.abs(f0), margin=0.5)
    methods = learned_methods(checkpoint_with_box(cfg, model, box), eps=eps)
    for name, method in methods.items():
        h = method.h
        assert h.takes_r2
        plain = (I.RecursivePolicy(without_pairs(h), name, method.clip) if isinstance(method, I.RecursivePolicy)
                 else I.SymmetricPolicy(without_pairs(h), method.k))
        h.mlp.tally.reset()
        run = I.integrate(method, m, x, v, 0.3, eps=eps)
        report = h.mlp.tally.report()
        assert run.metrics["steps"] > 10 and 0.0 < report["held_share"] < 1.0, report
        assert digest(run) == digest(I.integrate(plain, m, x, v, 0.3, eps=eps)), name


def test_state_never_hands_out_stale_pairs():
    m, x, v = cluster()
    st = I.State(m, x.copy(), v.copy(), I.accel(x, m))
    assert st.q() is None  # nothing recorded
    I.RecursiveAdaptive(0.02).step(st, math.inf)
    assert np.array_equal(st.q(), pair_r2(st.x))
    st.x = st.x + 1e-3  # code that moves the bodies without the pairs (aits.rule does)
    assert st.q() is None


def test_a_fully_held_rule_skips_the_network_and_gives_the_classical_factor():
    """Far outside the box w = exp(-|d|^2) is exactly 0: the factor is eta0 to the last bit whatever the network
    says, so the network is not evaluated (its weights removed here: evaluating them would raise). Partly held, it
    is evaluated."""
    cfg = bounded_cfg("soft_blend")
    model = wild_model(cfg, 1.0)
    m, x, v = cluster()
    eps = 0.05
    a = I.accel(x, m, eps)
    f, tau = scale_free_numpy(x, v, a, m, eps, "soft_blend")
    lo, hi = f.copy(), f.copy()
    lo[6] = hi[6] = 0.0  # the softening feature never seen (an unsoftened training mixture), as in training
    far = learned_methods(checkpoint_with_box(cfg, model, FeatureRanges(lo, hi)), eps=eps)["learned"].h
    near_hi = f + 1.0
    near_hi[0] = f[0] - 0.1  # one feature a fraction of its margin outside
    near = learned_methods(checkpoint_with_box(cfg, model, FeatureRanges(f - 1.0, near_hi)), eps=eps)["learned"].h
    assert far.mlp.ranges.weight(f) == 0.0 and 0.5 < near.mlp.ranges.weight(f) < 1.0
    g_full = learned_methods(checkpoint_with_box(cfg, model, FeatureRanges(lo, hi)), eps=eps,
                             range_check=False)["learned"].h(x, v, a, m) / tau
    assert abs(math.log(g_full / ETA0)) > 0.05  # the network alone is away from the classical factor here
    far.mlp.layers = None
    far.mlp.tally.reset()
    assert far(x, v, a, m) == ETA0 * M ** 0.0 * tau == ETA0 * tau
    assert far.mlp.tally.report()["held_share"] == 1.0
    near.mlp.layers = None
    with pytest.raises(TypeError):
        near(x, v, a, m)
