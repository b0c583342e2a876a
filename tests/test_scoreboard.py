"""Scoreboard (driver/evaluate.py, aits/scoreboard.py, aits/integrators.py) and the learned
scale-free, time-symmetric step (aits/policy.py, the factor mode of aits/stepper.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from aits import Config, NormScales, Stepper, build_payload, save_checkpoint
from aits import integrators as I
from aits import scoreboard as S
from aits.features import scale_free_numpy, scale_free_torch
from aits.model import NumpyMLP, build_model
from aits.physics import acceleration, kepler_ic
from aits.policy import FactorStep, learned_methods
from aits.samples import StateBatch
from driver import evaluate

from helpers import factor_cfg, perturbed_model


def forward_back(method: I.Method, m, x, v, steps: int) -> float:
    """Integrate ``steps`` steps, reverse the velocities, integrate ``steps`` back; return the
    relative distance to the start."""
    fwd = I.integrate(method, m, x, v, 1e9, max_steps=steps)
    back = I.integrate(method, m, fwd.trajectory["x"][-1], -fwd.trajectory["v"][-1], 1e9, max_steps=steps)
    assert fwd.metrics["status"] == back.metrics["status"] == "max_steps"
    return float(np.abs(back.trajectory["x"][-1] - x).max() / np.abs(x).max())


# ---------------------------------------------------------------- integrators
def test_energy_band_does_not_depend_on_where_the_oscillation_starts():
    """max |dE/E| is the distance from E(0) to the band's far edge; the band (max E - min E) / |E0| is the
    same from any start: an error oscillating as 1e-3 sin(t) gives max 1e-3 from its middle, 2e-3 from
    its crest, and a band of 2e-3 from both."""
    t = np.linspace(0.0, 20 * math.pi, 20001)
    for phase, want_max in ((0.0, 1e-3), (math.pi / 2, 2e-3)):
        e = -1.0 + 1e-3 * (np.sin(t + phase) - math.sin(phase))
        e = e * (-1.0 / e[0])  # E(0) = -1 exactly
        m = I.energy_metrics(t, e)
        assert m["band_rel_dE"] == pytest.approx(2e-3, rel=1e-6)
        assert m["max_rel_dE"] == pytest.approx(want_max, rel=1e-6)
    assert I.energy_metrics(t[:3], np.array([-1.0, np.nan, -1.0]))["band_rel_dE"] == math.inf


def test_numpy_kernels_equal_torch_physics():
    rng = np.random.default_rng(0)
    x, m = rng.normal(size=(5, 3)), rng.uniform(0.5, 2.0, 5)
    ref = acceleration(torch.tensor(x)[None], torch.tensor(m)[None], 0.1)[0].numpy()
    np.testing.assert_allclose(I.accel(x, m, 0.1), ref, rtol=1e-13, atol=1e-15)
    a, u = I.accel_pot(x, m, 0.1)
    np.testing.assert_allclose(a, ref, rtol=1e-13, atol=1e-15)
    d = np.sqrt(((x[None] - x[:, None]) ** 2).sum(-1) + 0.01)
    u_ref = -sum(m[i] * m[j] / d[i, j] for i in range(5) for j in range(i + 1, 5))
    assert u == pytest.approx(u_ref, rel=1e-13)


def test_symmetric_adaptive_is_time_reversible():
    m, x, v, _ = kepler_ic(0.9, 1.0)
    # Converged fixed-point iterations make the step exactly symmetric (to round-off).
    assert forward_back(I.SymmetricAdaptive(0.03, k=10), m, x, v, 300) < 1e-10
    # The explicit rule is not: the same test fails by orders of magnitude.
    assert forward_back(I.Adaptive(0.01), m, x, v, 900) > 1e-6


def recursive_forward_back(method: I.RecursivePolicy, m, x, v, steps: int) -> float:
    """``steps`` recursive steps, then the reversed state (velocities flipped, and as the step that led
    to it the next step h(z)^2 / dt the forward run would take) stepped ``steps`` times: the relative
    distance to the start."""
    st = I.State(m, x.copy(), v.copy(), I.accel(x, m))
    for _ in range(steps):
        method.step(st, math.inf)
    st.v = -st.v
    st.dt = I.recursive_dt(float(method.h(st.x, st.v, st.a, m)), st.dt)
    for _ in range(steps):
        method.step(st, math.inf)
    return float(np.abs(st.x - x).max() / np.abs(x).max())


def test_step_recursion_is_time_reversible_with_one_evaluation_per_step():
    m, x, v, _ = kepler_ic(0.9, 1.0)
    assert recursive_forward_back(I.RecursiveAdaptive(0.02), m, x, v, 600) < 1e-10
    h = FactorStep(NumpyMLP(perturbed_model(factor_cfg(symmetric_iterations=0, recursive=True)), "tanh"), 0.0)
    assert recursive_forward_back(I.RecursivePolicy(h), m, x, v, 600) < 1e-10
    # dt_n * dt_{n-1} = h(z_n)^2 along the run, and the first step is h(z_0).
    run = I.integrate(I.RecursiveAdaptive(0.02), m, x, v, 1e9, max_steps=50)
    dts, xs, vs = run.trajectory["dt"], run.trajectory["x"], run.trajectory["v"]
    assert dts[1] == pytest.approx(0.02 * I.timescale(x, I.accel(x, m)), rel=1e-14)
    for n in range(2, 50):
        h_n = 0.02 * I.timescale(xs[n - 1], I.accel(xs[n - 1], m))
        assert dts[n] * dts[n - 1] == pytest.approx(h_n ** 2, rel=1e-12)
    assert run.metrics["force_evals"] == 51


def test_logh_keeps_kepler_energy_over_ten_periods():
    m, x, v, period = kepler_ic(0.9, 1.0)
    run = I.integrate(I.LogH(0.05), m, x, v, 10 * period)
    assert run.metrics["status"] == "ok" and run.metrics["end_time"] == pytest.approx(10 * period, rel=1e-12)
    assert run.metrics["max_rel_dE"] < 1e-12
    # The plain adaptive leapfrog at similar cost is many orders worse.
    ad = I.integrate(I.Adaptive(0.03), m, x, v, 10 * period)
    assert ad.metrics["max_rel_dE"] > 1e-6


def test_force_evaluation_counts_equal_the_accelerations_computed(monkeypatch):
    calls = {"n": 0}
    plain, with_pot = I.accel_pairs, I.accel_pot  # accel is accel_pairs without the pairs: counted there

    def counted(*a, **k):
        calls["n"] += 1
        return plain(*a, **k)

    def counted_pot(*a, **k):
        calls["n"] += 1
        return with_pot(*a, **k)

    monkeypatch.setattr(I, "accel_pairs", counted)
    monkeypatch.setattr(I, "accel_pot", counted_pot)
    m, x, v, period = kepler_ic(0.8, 1.0)
    cfg = factor_cfg()
    h = FactorStep(NumpyMLP(perturbed_model(cfg), "tanh"), 0.0)
    methods = [I.FixedStep(period / 700), I.Adaptive(0.05), I.SymmetricAdaptive(0.05, 2), I.LogH(0.1),
               I.SymmetricPolicy(h, 1), I.PolicyStep(lambda s: h(s.x, s.v, s.a, s.m)), I.RecursiveAdaptive(0.05),
               I.RecursivePolicy(h)]
    for method in methods:
        calls["n"] = 0
        run = I.integrate(method, m, x, v, 2.3 * period)  # ends mid-orbit: the clipped last step counts
        assert run.metrics["status"] == "ok"
        # logh's start-up U evaluation is one more pass over the pairs than its steps spend
        extra = 1 if method.name == "logh" else 0
        assert run.metrics["force_evals"] + extra == calls["n"], method.name


def test_equal_cost_tuning_lands_within_two_percent():
    sys = S.kepler_system(0.9, 1.0, 3, "kepler_long")
    for family in S.BASELINES:
        run, trials = S.match_evals(family, sys, 4000, 1)
        assert abs(run.metrics["force_evals"] - 4000) <= 0.02 * 4000, (family, run.metrics["force_evals"])
        assert run in trials


# ---------------------------------------------------------------- learned step
@pytest.mark.parametrize("timescale,radial", [("nn", "fraction"), ("blend", "fraction"), ("soft_blend", "fraction"),
                                              ("soft_blend", "energy"), ("nn", "energy")])
def test_scale_free_features_numpy_equal_torch_and_are_even_in_time(timescale, radial):
    rng = np.random.default_rng(2)
    for n in (2, 3, 5, 7):  # 7: above aits.steprules.SMALL_N, the vectorised form
        x, v, m = rng.normal(size=(n, 3)), rng.normal(size=(n, 3)), rng.uniform(0.5, 2, n)
        a = I.accel(x, m, 0.05)
        fn, tn = scale_free_numpy(x, v, a, m, 0.05, timescale, radial=radial)
        ft, tt = scale_free_torch(*(torch.tensor(y)[None] for y in (x, v, a, m)), 0.05, timescale, radial)
        np.testing.assert_allclose(fn, ft[0].numpy(), rtol=1e-12, atol=1e-14)
        assert tn == pytest.approx(float(tt[0]), rel=1e-12)
        fr, tr = scale_free_numpy(x, -v, a, m, 0.05, timescale, radial=radial)
        np.testing.assert_allclose(fn, fr, rtol=1e-13, atol=1e-15)
        assert tr == pytest.approx(tn, rel=1e-13)
        fraction = scale_free_numpy(x, v, a, m, 0.05, timescale)[0]
        # 'energy': feature 1 is the fraction times feature 0 (the radial part of u^2 r / mu), the rest the same
        expect = fraction if radial == "fraction" else np.r_[fraction[:1], fraction[1] * fraction[0], fraction[2:]]
        np.testing.assert_allclose(fn, expect, rtol=1e-12, atol=1e-15)
        if timescale != "nn":  # the 9th feature is log(tau_prs / tau_nn) of body i*; tau their geometric mean
            from aits.steprules import prs_timescales
            r_nn = np.sort(np.linalg.norm(x[None] - x[:, None], axis=-1), 1)[:, 1]
            i_star = int(np.argmin(np.sqrt(r_nn / np.linalg.norm(a, axis=-1))))
            t_nn, t_prs = I.timescale(x, a), prs_timescales(x, v, a, m, 0.05)[i_star]
            assert len(fn) == 9 and fn[8] == pytest.approx(math.log(t_prs / t_nn), rel=1e-12)
            # soft_blend: the mean leans to tau_nn by the softening share f = eps / (r + eps) of the pair
            lean = 0.5 if timescale == "blend" else 0.5 * (1 - 0.05 / (r_nn[i_star] + 0.05))
            assert tn == pytest.approx(t_nn * (t_prs / t_nn) ** lean, rel=1e-12)


def test_learned_factor_step_is_scale_invariant():
    """Lengths x L and masses x M: the learned dt scales by sqrt(L^3 / M), in training and inference."""
    cfg = factor_cfg(symmetric_iterations=0)
    model = perturbed_model(cfg)
    stepper = Stepper(cfg, NormScales())
    rng = np.random.default_rng(4)
    m, x, v = rng.uniform(0.5, 2, 3), rng.normal(size=(3, 2)), rng.normal(size=(3, 2)) * 0.5
    L, M = 7.3, 0.21
    ms, xs, vs = m * M, x * L, v * math.sqrt(M / L)

    def dt_torch(mm, xx, vv):
        prep = stepper.prepare(StateBatch.start(mm[None], xx[None], vv[None]))
        with torch.no_grad():
            return float(stepper.step_size(model, prep.feats, prep.tau)[0])

    ratio = dt_torch(ms, xs, vs) / dt_torch(m, x, v)
    assert ratio == pytest.approx(math.sqrt(L ** 3 / M), rel=1e-10)
    h = FactorStep(NumpyMLP(model, "tanh"), 0.0)
    num = h(xs, vs, I.accel(xs, ms), ms) / h(x, v, I.accel(x, m), m)
    assert num == pytest.approx(math.sqrt(L ** 3 / M), rel=1e-10)
    # and the numpy forward pass is the model's
    assert h(x, v, I.accel(x, m), m) == pytest.approx(dt_torch(m, x, v), rel=1e-12)


def test_learned_symmetric_is_time_reversible():
    cfg = factor_cfg()
    h = FactorStep(NumpyMLP(perturbed_model(cfg), "tanh"), 0.0)
    m, x, v, _ = kepler_ic(0.9, 1.0)
    assert forward_back(I.SymmetricPolicy(h, k=12), m, x, v, 300) < 1e-10


def test_symmetric_training_attempt_matches_inference_and_has_gradient():
    """The differentiable training attempt takes the same dt as the numpy inference rule."""
    cfg = factor_cfg(symmetric_iterations=2)
    model = perturbed_model(cfg)
    stepper = Stepper(cfg, NormScales())
    m, x, v, _ = kepler_ic(0.7, 1.0)
    att = stepper.attempt(model, stepper.prepare(StateBatch.start(m[None], x[None], v[None])))
    att.rel_dE.sum().backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    state = I.State(m, x.copy(), v.copy(), I.accel(x, m))
    rule = I.SymmetricPolicy(FactorStep(NumpyMLP(model, "tanh"), 0.0), 2)
    rule.step(state, 1e9)
    assert state.dt == pytest.approx(float(att.dt.detach()[0]), rel=1e-12)
    np.testing.assert_allclose(state.x, att.x.detach()[0].numpy(), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- the quick suite end to end
def write_ckpt(tmp_path, name: str, cfg: Config) -> str:
    model = perturbed_model(cfg)
    payload = build_payload(7, model.state_dict(), None, cfg, NormScales().to_dict())
    return str(save_checkpoint(tmp_path / name / "model" / "model_epoch_0007.pt", payload))


def check_quick_board(board: dict, n_ckpts: int) -> None:
    """The quick suite's board: every system of every checkpoint, every method at equal evaluations."""
    assert set(board) >= {"suite", "checkpoints", "systems", "summary"}
    assert board["suite"] == "quick" and len(board["checkpoints"]) == n_ckpts
    per_ckpt = board["systems"] if n_ckpts > 1 else {"only": board["systems"]}
    assert len(per_ckpt) == n_ckpts
    for systems in per_ckpt.values():
        assert set(systems) == {s.name for s in S.suite_systems("quick", 2, 2, 0.0)}
        for entry in systems.values():
            assert set(entry) >= {"kind", "params", "duration", "methods", "ratios"}
            assert set(entry["methods"]) >= {"learned", "fixed", "adaptive", "symmetric_adaptive", "logh", "ias15"}
            lm = entry["methods"]["learned"]
            for key in ("force_evals", "steps", "wall_time_s", "max_rel_dE", "final_rel_dE", "drift_slope",
                        "final_position_error", "status"):
                assert key in lm
            for base in S.families_for(S.kepler_system(0.5, 1.0, 1, "x")):  # two bodies, unsoftened
                b = entry["methods"][base]
                assert b["evals_matched"], (base, b["force_evals"], lm["force_evals"])
                r = entry["ratios"]["equal_force_evals"][base]
                assert r == pytest.approx(lm["max_rel_dE"] / b["max_rel_dE"], rel=1e-9)
                assert entry["ratios"]["equal_wall_time"][base] > 0
            # logh is the physical limit on Kepler orbits, far below any leapfrog
            assert entry["methods"]["logh"]["max_rel_dE"] < 1e-10
            # the energy band: between max |dE/E| and twice it, for every run; its ratios are the bands' ratios,
            # and strongest_band is the classical family with the smallest band
            for name, mm in entry["methods"].items():
                if name != "ias15" and mm["status"] == "ok":
                    assert mm["max_rel_dE"] * (1 - 1e-9) <= mm["band_rel_dE"] <= 2 * mm["max_rel_dE"] * (1 + 1e-9)
            bands = {f: entry["methods"][f]["band_rel_dE"] for f in S.CLASSICAL if f in entry["methods"]}
            assert entry["strongest_band"] == min(bands, key=bands.get)
            rb = entry["ratios_band"]["equal_force_evals"]
            assert rb["strongest"] == pytest.approx(lm["band_rel_dE"] / min(bands.values()), rel=1e-9)
            assert rb["adaptive"] == pytest.approx(lm["band_rel_dE"] / bands["adaptive"], rel=1e-9)


def test_quick_suite_of_one_checkpoint_in_its_process(quick_board):
    """The shared board (conftest.quick_board: the command line, --workers 1, one process)."""
    check_quick_board(quick_board["board"], 1)
    assert "| system |" in (quick_board["out"] / "scoreboard.md").read_text()


def test_quick_suite_of_two_checkpoints_as_ray_tasks_gives_the_in_process_numbers(tmp_path, quick_board):
    """Two checkpoints as Ray tasks; the first is the shared board's checkpoint, and its numbers are the
    in-process run's (force evaluations and energy errors do not depend on where a system ran)."""
    paths = [quick_board["ckpt"], write_ckpt(tmp_path, "b", factor_cfg(symmetric_iterations=0))]
    out = tmp_path / "board"
    assert evaluate.main(["--checkpoint", *paths, "--suite", "quick", "--workers", "2", "--out", str(out)]) == 0
    board = json.loads((out / "scoreboard.json").read_text())
    check_quick_board(board, 2)
    assert "across_checkpoints" in board["summary"] and (out / "cost.png").stat().st_size > 0
    first = board["systems"][board["checkpoints"][0]["label"]]
    for name, entry in quick_board["board"]["systems"].items():
        for meth in ("learned", "adaptive", "symmetric_adaptive", "logh"):
            for key in ("force_evals", "max_rel_dE"):
                assert first[name]["methods"][meth][key] == entry["methods"][meth][key], (name, meth, key)
    assert "| system |" in (out / "scoreboard.md").read_text()


def test_evaluate_rejects_a_missing_checkpoint(tmp_path, capsys):
    assert evaluate.main(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt" in err[0]
    assert not (tmp_path / "o").exists()


def test_seed_mode_checkpoint_counts_feature_accelerations(tmp_path):
    """The seed's mode rebuilds features from K + 1 states each step: K + 1 more evaluations per step."""
    cfg = Config.from_dict({"features": {"history_len": 2}, "model": {"hidden_dims": [8], "init_dt": 0.01}})
    model = build_model(cfg)
    ckpt = build_payload(1, model.state_dict(), None, cfg, NormScales().to_dict())
    (method,) = learned_methods(ckpt).values()
    m, x, v, period = kepler_ic(0.5, 1.0)
    run = I.integrate(method, m, x, v, 0.5)
    assert run.metrics["force_evals"] == 1 + run.metrics["steps"] * (1 + 3)


def test_radial_energy_feature_stays_smooth_where_the_fraction_swings_at_the_apocentre_of_a_near_radial_orbit():
    """Kepler e = 0.999 under the classical recursion (eta 0.01): around the apocentre the relative velocity turns
    over within a few steps, so the squared cosine (feature 1, 'fraction') jumps by more than 0.2 from one step to
    the next; the radial energy ('energy') changes by less than 2e-3 a step there, and all along the orbit by
    no more than a few hundredths (at ~100 steps per tau)."""
    from aits.physics import kepler_pair

    m, x0, v0, period = kepler_pair(0.999, 1.0)
    run = I.integrate(I.RecursiveAdaptive(0.01, "blend", clip=1.2), m, x0, v0, 0.6 * period, max_steps=10**6)
    xs, vs = run.trajectory["x"], run.trajectory["v"]
    sep = np.linalg.norm(xs[:, 1] - xs[:, 0], axis=-1)
    assert sep.max() > 1900 * sep.min() and np.argmax(sep) < len(sep) - 10  # past the apocentre, r_a / r_p = 1999
    feats = {radial: np.array([scale_free_numpy(x, v, I.accel(x, m), m, 0.0, "soft_blend", radial=radial)[0][1]
                               for x, v in zip(xs, vs)]) for radial in ("fraction", "energy")}
    apo = int(np.argmax(sep))
    near = slice(apo - 5, apo + 6)
    assert np.abs(np.diff(feats["fraction"][near])).max() > 0.2
    assert np.abs(np.diff(feats["energy"][near])).max() < 2e-3
    assert np.abs(np.diff(feats["energy"])).max() < 0.05
