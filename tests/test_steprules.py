"""Each numpy / torch pair of aits/steprules.py gives the same numbers on random states."""
import numpy as np
import pytest
import torch

from aits import integrators as I
from aits import problems as P
from aits import stepper
from aits.physics import acceleration
from aits.steprules import (classical_timescale, prs_timescale, prs_timescale_at, prs_timescale_at_torch, prs_timescales,
                            recursive_dt, recursive_dt_torch, set_diagonal, symmetric_dt, timescale)


@pytest.mark.parametrize("n,dim", [(2, 2), (3, 3), (5, 2)])
def test_classical_timescale_torch_equals_numpy(n, dim):
    rng = np.random.default_rng(n * 10 + dim)
    m, x = rng.uniform(0.1, 2.0, size=(7, n)), rng.normal(size=(7, n, dim)) * rng.uniform(0.01, 10.0, size=(7, 1, 1))
    a = acceleration(torch.as_tensor(x), torch.as_tensor(m)).numpy()
    got = classical_timescale(torch.as_tensor(x), torch.as_tensor(a)).numpy()
    want = np.array([timescale(x[b], a[b]) for b in range(7)])
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    assert len(set(np.round(np.log(want), 6))) == 7  # the states really differ


@pytest.mark.parametrize("n,eps", [(2, 0.0), (3, 0.05), (6, 0.0)])
def test_prs_timescale_torch_equals_numpy(n, eps):
    """The torch twin of IAS15's 2024 timescale at one body: numpy's per-body values, batched; massless
    padding changes none."""
    rng = np.random.default_rng(n)
    m, x = rng.uniform(0.1, 2.0, size=(5, n)), rng.normal(size=(5, n, 3))
    v = rng.normal(size=(5, n, 3))
    a = acceleration(torch.as_tensor(x), torch.as_tensor(m), eps).numpy()
    want = np.array([prs_timescales(x[b], v[b], a[b], m[b], eps) for b in range(5)])  # (5, n)
    pad = lambda y, fill: np.concatenate([y, np.full((5, 2, *y.shape[2:]), fill)], 1)  # noqa: E731
    for arrays in ((x, v, a, m), (pad(x, 0.0), pad(v, 0.0), pad(a, 0.0), pad(m, 0.0))):
        t = [torch.as_tensor(y) for y in arrays]
        for i in range(n):
            got = prs_timescale_at_torch(*t, torch.full((5,), i), eps).numpy()
            np.testing.assert_allclose(got, want[:, i], rtol=1e-12, atol=0)
            at = [prs_timescale_at(*(y[b] for y in arrays), i, eps) for b in range(5)]  # numpy, one body
            np.testing.assert_allclose(at, want[:, i], rtol=1e-12, atol=0)
    assert len(set(np.round(np.log(want.min(1)), 6))) == 5  # the states really differ
    assert np.allclose(want.min(1), [prs_timescale(x[b], v[b], a[b], m[b], eps) for b in range(5)], rtol=0, atol=0)
    # the figure-eight's middle body has a = 0 at t = 0: it carries no timescale, in both twins
    fm, fx, fv, _ = P.figure_eight()
    fa = I.accel(fx, fm)
    per_body = np.array([float(prs_timescale_at_torch(*(torch.as_tensor(y)[None] for y in (fx, fv, fa, fm)),
                                                      torch.tensor([i]))[0]) for i in range(3)])
    np.testing.assert_array_equal(np.isinf(per_body), np.isinf(prs_timescales(fx, fv, fa, fm)))
    assert np.isinf(per_body).sum() == 1


@pytest.mark.parametrize("clip", [None, 2.0])
def test_recursive_dt_torch_equals_numpy(clip):
    rng = np.random.default_rng(1)
    h = rng.uniform(1e-3, 1.0, size=40)
    dt_prev = np.r_[h[:30] * rng.uniform(0.2, 5.0, size=30), np.zeros(5), -h[35:]]  # started, fresh, bad
    got = recursive_dt_torch(torch.as_tensor(h), torch.as_tensor(dt_prev), clip).numpy()
    want = np.array([recursive_dt(float(a), float(b), clip) for a, b in zip(h, dt_prev)])
    assert np.array_equal(got, want)
    assert np.array_equal(got[30:], h[30:])  # no previous step: h itself
    if clip:  # the clip really acts on some of them
        assert ((got == h * clip) | (got == h / clip)).sum() >= 5


def test_symmetric_dt_torch_equals_numpy_and_solves_the_fixed_point():
    """One iteration for floats and tensors alike; with many iterations dt = (h0 + h_end(dt)) / 2."""
    h0 = np.array([0.1, 0.3, 0.02])
    def h_end(dt):  # smooth, contracting: the end's h falls with the trial step
        return h0 / (1.0 + dt)
    got = symmetric_dt(torch.as_tensor(h0), lambda d: torch.as_tensor(h_end(d.numpy())), 3).numpy()
    want = np.array([symmetric_dt(float(h0[i]), lambda d, i=i: float(h0[i] / (1.0 + d)), 3) for i in range(3)])
    assert np.array_equal(got, want)
    dt = symmetric_dt(h0, h_end, 60)
    np.testing.assert_allclose(dt, 0.5 * (h0 + h_end(dt)), rtol=1e-14)
    with pytest.raises(I.BadStep):
        symmetric_dt(-1.0, lambda d: 1.0, 1, I.check_dt)


def test_old_names_are_the_shared_ones():
    assert I.timescale is timescale and I.recursive_dt is recursive_dt
    assert stepper.recursive_dt_torch is recursive_dt_torch and stepper.classical_timescale is classical_timescale


def test_clipped_recursion_is_the_plain_one_on_a_smooth_orbit_and_holds_a_close_encounter():
    """``recursive_clip`` (c = RECURSION_CLIP): on an eccentric Kepler orbit the clip never acts (the same run
    to the last bit); on the Pythagorean problem, where the unclipped recursion's alternating mode grows at
    the close encounters after t ~ 15, it keeps max |dE/E| below 1 while the plain recursion loses the energy."""
    from dataclasses import replace

    from aits import scoreboard as S

    kep = S.kepler_system(0.95, 1.0, 3, "k")
    a = S.run_method(S.make_baseline("recursive_adaptive", 0.01), kep, 1, 10**6)
    b = S.run_method(S.make_baseline("recursive_clip", 0.01), kep, 1, 10**6)
    assert a.metrics["force_evals"] == b.metrics["force_evals"]
    assert np.array_equal(a.trajectory["x"], b.trajectory["x"])
    pyth = next(s for s in S.practitioner_systems() if s.name == "pythagorean")
    plain = S.run_method(S.make_baseline("recursive_adaptive", 0.01), pyth, 1, 10**6)
    clipped = S.run_method(S.make_baseline("recursive_clip", 0.01), pyth, 1, 10**6)
    assert plain.metrics["max_rel_dE"] > 1.0
    assert clipped.metrics["max_rel_dE"] < 0.5
    # before the encounters the two are the same run
    early = replace(pyth, duration=8.0)
    e1 = S.run_method(S.make_baseline("recursive_adaptive", 0.01), early, 1, 10**6).metrics["max_rel_dE"]
    e2 = S.run_method(S.make_baseline("recursive_clip", 0.01), early, 1, 10**6).metrics["max_rel_dE"]
    assert e1 == pytest.approx(e2, rel=1e-9)


def test_recursion_clip_key_reaches_every_form_of_the_rule():
    from aits import Config
    from aits.stepper import Stepper
    from aits.features import NormScales

    cfg = Config.load("configs/generalist.yaml")
    assert cfg.model.step_clip == 1.2 and cfg.model.max_modulation == 3.0
    assert Stepper(cfg, NormScales()).clip == 1.2
    bare = Config.from_dict({"features": {"feature_type": "scale_free"},
                             "model": {"output": "factor", "init_factor": 0.01, "max_modulation": 2.0, "recursive": True}})
    assert bare.model.step_clip == 2.0  # no recursion_clip: the bound M, as before the key


def test_set_diagonal_is_fill_diagonal_on_contiguous_and_strided_arrays():
    rng = np.random.default_rng(5)
    for a in (rng.normal(size=(5, 5)), rng.normal(size=(6, 6)).T, rng.normal(size=(8, 8))[::2, ::2]):
        want = a.copy()
        np.fill_diagonal(want, np.inf)
        set_diagonal(a, np.inf)
        assert np.array_equal(a, want)


@pytest.mark.parametrize("n,dim", [(2, 3), (3, 2), (4, 3), (5, 3)])
def test_few_body_python_loops_equal_the_vectorised_forms(monkeypatch, n, dim):
    """Up to SMALL_N bodies the timescales and the scale-free features run as Python loops over the pairs;
    they give the numbers of the vectorised forms (SMALL_N = 0 forces those), massless padding and
    softening included."""
    from aits import features, steprules
    from aits.steprules import SMALL_N, blend_timescale, nn_timescales, soft_blend_timescale
    assert n <= SMALL_N
    rng = np.random.default_rng(100 + n)
    fns = {"tau": lambda x, v, a, m, e: timescale(x, a), "tau_i": lambda x, v, a, m, e: nn_timescales(x, a),
           "prs": prs_timescales, "prs_at_last": lambda x, v, a, m, e: prs_timescale_at(x, v, a, m, len(m) - 1, e),
           "blend": blend_timescale, "soft_blend": soft_blend_timescale,
           "feat_nn": lambda x, v, a, m, e: np.r_[features.scale_free_numpy(x, v, a, m, e)],
           "feat_blend": lambda x, v, a, m, e: np.r_[features.scale_free_numpy(x, v, a, m, e, "blend")],
           "feat_soft": lambda x, v, a, m, e: np.r_[features.scale_free_numpy(x, v, a, m, e, "soft_blend")]}
    loops, vectorised = [], []
    for k in range(12):
        m = rng.uniform(1e-4, 2.0, size=n)
        x = rng.normal(size=(n, dim)) * rng.uniform(0.01, 10.0)
        v, eps = rng.normal(size=(n, dim)), (0.0, 0.05)[k % 2]
        if n > 2 and k % 3 == 0:
            m[-1] = 0.0  # a padded system: the massless body is left out of the features
        a = I.accel(x, m, eps)
        for out in (loops, vectorised):
            if out is vectorised:
                monkeypatch.setattr(steprules, "SMALL_N", 0)
            out.append({name: np.atleast_1d(f(x, v, a, m, eps)) for name, f in fns.items()})
            monkeypatch.undo()
    for got, want in zip(loops, vectorised):
        for name in fns:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-15, err_msg=name)
    taus = [w["tau"][0] for w in vectorised]
    assert len(set(np.round(np.log(taus), 6))) == 12  # the states really differ
