"""The ``soft_blend`` timescale (docs/DESIGN.md §2.3b): the blend sqrt(tau tau_prs) on unsoftened pairs, leaning to
tau = sqrt(r/|a|) as the softening smooths the pair that sets tau; its classical rule on the boards, the learned
rule that contains it, and the shipped config that uses it. The ``prs_lean`` timescale is the same with weight 3/4 on
tau_prs in place of 1/2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aits import NormScales, build_payload
from aits import integrators as I
from aits import problems as P
from aits import scoreboard as SB
from aits.features import scale_free_numpy, scale_free_torch
from aits.policy import learned_methods
from aits.steprules import (PRS_WEIGHT, TIMESCALES, blend_timescale, lean_exponent, lean_of, nn_timescales,
                            prs_timescales, soft_blend_exponent, soft_blend_timescale)
from helpers import ETA0, bounded_cfg, classical_model, config_changes, forward_back, wild_model


def parts(x, v, a, m, eps):
    """tau, tau_prs and f = eps / (r + eps) of the body that sets tau, each from its own definition."""
    tau_i = nn_timescales(x, a)
    i = int(np.argmin(tau_i))
    r = np.sort(np.linalg.norm(x - x[i], axis=-1))[1]
    return float(tau_i[i]), float(prs_timescales(x, v, a, m, eps)[i]), eps / (r + eps)


@pytest.mark.parametrize("ts,w", [("soft_blend", 0.5), ("prs_lean", 0.75)])
@pytest.mark.parametrize("n", [2, 3, 7, 12])  # 7, 12: above aits.steprules.SMALL_N, the vectorised forms
def test_soft_blend_is_tau_to_the_softened_share_of_the_prs_ratio(n, ts, w):
    """tau * (tau_prs / tau)^(w (1 - f)) in the classical rule, the numpy features and the torch features alike;
    tau^(1 - w) tau_prs^w where eps = 0 (the blend for soft_blend), and tau where the softening swamps the pair."""
    assert PRS_WEIGHT[ts] == w
    rng = np.random.default_rng(n)
    seen = []
    for k in range(8):
        m, x, v = rng.uniform(0.3, 2.0, n), rng.normal(size=(n, 3)), 0.5 * rng.normal(size=(n, 3))
        eps = (0.0, 0.05, 0.3, 1e8)[k % 4]
        a = I.accel(x, m, eps)
        tau, t_prs, f = parts(x, v, a, m, eps)
        want = tau * (t_prs / tau) ** (w * (1 - f))
        got = TIMESCALES[ts](x, v, a, m, eps)
        assert got == pytest.approx(want, rel=1e-12)
        feats, t_np = scale_free_numpy(x, v, a, m, eps, ts)
        assert t_np == pytest.approx(want, rel=1e-12) and feats[6] == pytest.approx(f, rel=1e-12)
        _, t_t = scale_free_torch(*(torch.tensor(z)[None] for z in (x, v, a, m)), eps, ts)
        assert float(t_t[0]) == pytest.approx(want, rel=1e-12)
        if eps == 0 and ts == "soft_blend":
            assert got == pytest.approx(blend_timescale(x, v, a, m, 0.0), rel=1e-14)
        if eps == 0 and ts == "prs_lean":  # the blend's log ratio to tau, three halves of it
            assert math.log(got / tau) == pytest.approx(1.5 * math.log(blend_timescale(x, v, a, m, 0.0) / tau),
                                                        rel=1e-9, abs=1e-12)
        if eps == 1e8:  # f = 1 - O(r / eps): tau itself
            assert got == pytest.approx(tau, rel=1e-5)
        seen.append(abs(math.log(got / blend_timescale(x, v, a, m, eps))))
    assert max(seen) > 0.05  # softened states really move it off the blend


@pytest.mark.parametrize("ts,text", [("soft_blend", "(1 - f) / 2"), ("prs_lean", "3 (1 - f) / 4"),
                                     ("prs_point_lean", "(1 - f) (1/2 + 1/4 exp(-f / 0.01))")])
def test_the_described_exponent_is_the_weight_the_timescale_uses(ts, text):
    """The formula text of Rule.describe and driver/export.py comes from PRS_WEIGHT and PRS_HANDBACK: read back as
    arithmetic, it is the exponent soft_blend raises tau_prs / tau to."""
    assert soft_blend_exponent(ts) == text
    for f in (0.0, 0.004, 0.3, 1.0):
        expr = soft_blend_exponent(ts, "f6").replace(" (", " * (").replace(" exp(", " * exp(")
        got = eval(expr, {"f6": f, "exp": math.exp})  # noqa: S307 - our own text
        assert got == pytest.approx(lean_exponent(f, *lean_of(ts)), rel=1e-15, abs=1e-15)
    if ts != "prs_point_lean":
        assert lean_exponent(0.3, *lean_of(ts)) == PRS_WEIGHT[ts] * (1 - 0.3)


@pytest.mark.parametrize("n", [2, 3, 7, 12])  # 7, 12: above aits.steprules.SMALL_N, the vectorised forms
def test_prs_point_lean_is_prs_lean_unsoftened_and_the_soft_blend_softened(n):
    """prs_point_lean: on an unsoftened system prs_lean to the bit in the classical rule, the numpy features and the
    torch features (values and gradients in x and v: the same training); with softening tau (tau_prs / tau)^((1 - f)
    (1/2 + 1/4 exp(-f / 0.01))) in all three forms, within 1e-4 of the soft blend's log where f >= 0.1 and between
    the two where the softening is slight."""
    rng = np.random.default_rng(50 + n)
    slight, handed_back = [], 0
    for k in range(8):
        m, x, v = rng.uniform(0.3, 2.0, n), rng.normal(size=(n, 3)), 0.5 * rng.normal(size=(n, 3))
        eps = (0.0, 0.05, 1.0, 1e-3)[k % 4]
        a = I.accel(x, m, eps)
        got = TIMESCALES["prs_point_lean"](x, v, a, m, eps)
        f_np, t_np = scale_free_numpy(x, v, a, m, eps, "prs_point_lean")
        xt, vt = (torch.tensor(z, requires_grad=True) for z in (x, v))
        at, mt = torch.tensor(a)[None], torch.tensor(m)[None]
        out = {}
        for ts in ("prs_point_lean", "prs_lean", "soft_blend"):
            feats, t_t = scale_free_torch(xt[None], vt[None], at, mt, eps, ts)
            gx, gv = torch.autograd.grad(t_t.sum() + feats.sum(), (xt, vt))
            out[ts] = (feats.detach(), float(t_t[0].detach()), gx, gv)
        if eps == 0:
            assert got == TIMESCALES["prs_lean"](x, v, a, m, eps)
            assert t_np == scale_free_numpy(x, v, a, m, eps, "prs_lean")[1]
            assert np.array_equal(f_np, scale_free_numpy(x, v, a, m, eps, "prs_lean")[0])
            assert all(torch.equal(p, q) for p, q in zip(out["prs_point_lean"], out["prs_lean"]) if
                       isinstance(p, torch.Tensor)) and out["prs_point_lean"][1] == out["prs_lean"][1]
            continue
        tau, t_prs, f = parts(x, v, a, m, eps)
        want = tau * (t_prs / tau) ** ((1 - f) * (0.5 + 0.25 * math.exp(-f / 0.01)))
        assert got == pytest.approx(want, rel=1e-12) and t_np == pytest.approx(want, rel=1e-12)
        assert out["prs_point_lean"][1] == pytest.approx(want, rel=1e-12)
        soft = TIMESCALES["soft_blend"](x, v, a, m, eps)
        if f >= 0.1:
            assert abs(math.log(got / soft)) <= 1e-4 * abs(math.log(t_prs / tau)) + 1e-15
            handed_back += 1
        else:
            lean = TIMESCALES["prs_lean"](x, v, a, m, eps)
            assert min(soft, lean) - 1e-15 <= got <= max(soft, lean) + 1e-15
            slight.append(abs(math.log(got / soft)))
    assert handed_back > 0 and slight and max(slight) > 1e-3  # both regimes seen; slight softening keeps some lean


def test_soft_blend_gradient_flows_through_the_softening_weight():
    """The torch timescale is differentiable in x through f as well as tau and tau_prs: its x-gradient equals
    central differences of the numpy timescale."""
    rng = np.random.default_rng(5)
    m, x, v = rng.uniform(0.5, 1.5, 4), rng.normal(size=(4, 3)), 0.4 * rng.normal(size=(4, 3))
    eps = 0.2
    from aits.physics import acceleration
    xt = torch.tensor(x, requires_grad=True)
    mt = torch.tensor(m)
    _, tau = scale_free_torch(xt[None], torch.tensor(v)[None], acceleration(xt[None], mt[None], eps), mt[None], eps,
                              "soft_blend")
    tau.sum().backward()
    h = 1e-6
    fd = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, dn = x.copy(), x.copy()
        up[idx] += h
        dn[idx] -= h
        fd[idx] = (soft_blend_timescale(up, v, I.accel(up, m, eps), m, eps)
                   - soft_blend_timescale(dn, v, I.accel(dn, m, eps), m, eps)) / (2 * h)
    np.testing.assert_allclose(xt.grad.numpy(), fd, rtol=1e-5, atol=1e-8)


def test_soft_blend_rule_is_time_reversible_on_a_softened_system():
    """A wild soft_blend bounded recursion on a softened hierarchical triple (the inner pair at f = 0.19-0.30 at
    every step) retraces 2000 steps when the velocities are reversed, and its steps are not the blend rule's."""
    t = SB.hierarchical_triple(1, dim=3)
    eps = 0.03
    rules = {}
    for ts in ("blend", "soft_blend"):
        cfg = bounded_cfg(ts)
        rules[ts] = learned_methods(build_payload(0, wild_model(cfg, 0.5).state_dict(), None, cfg,
                                                  NormScales().to_dict()), eps=eps)["learned"]
    a = I.accel(t.x, t.m, eps)
    assert abs(math.log(rules["soft_blend"].h(t.x, t.v, a, t.m) / rules["blend"].h(t.x, t.v, a, t.m))) > 0.02
    assert forward_back(rules["soft_blend"], t.m, t.x, t.v, 2000, eps=eps) < 1e-10


def test_board_judges_softened_systems_against_the_soft_blend_rule():
    """A soft_blend model with its last layer zeroed is the classical recursive_soft_blend_clip at ETA0 (the same
    run to rounding), not the blend rule; the scoreboard runs that family on softened systems and leaves it out on
    unsoftened ones, where it is the blend rule."""
    cfg = bounded_cfg("soft_blend", max_modulation=3.0, recursion_clip=1.2)
    m, x, v = P.plummer(16, 3)
    soft = SB.System("plummer16", "problem", "test", {}, m, x, v, 3.0, eps=0.05, bounded=False)
    learned = learned_methods(build_payload(0, classical_model(cfg).state_dict(), None, cfg, NormScales().to_dict()),
                              eps=soft.eps)["learned"]
    runs = {name: SB.run_method(method, soft, 1, 100_000).metrics for name, method in
            (("learned", learned), ("soft", SB.make_baseline("recursive_soft_blend_clip", ETA0, soft.eps)),
             ("blend", SB.make_baseline("recursive_blend_clip", ETA0, soft.eps)))}
    assert runs["learned"]["force_evals"] == runs["soft"]["force_evals"] > 300
    assert runs["learned"]["max_rel_dE"] == pytest.approx(runs["soft"]["max_rel_dE"], rel=1e-6)
    assert runs["blend"]["force_evals"] != runs["soft"]["force_evals"]
    families = ("recursive_blend_clip", "recursive_soft_blend_clip", "recursive_clip")
    entry = SB.score_system(soft, {"learned": learned}, baselines=families, reference=False, wall=False)
    assert set(entry["methods"]) == {"learned", *families}
    assert entry["methods"]["recursive_soft_blend_clip"]["param"] == pytest.approx(ETA0, rel=0.05)
    plain = SB.System("plummer16_plain", "problem", "test", {}, m, x, v, 0.3, bounded=False)
    entry = SB.score_system(plain, {"learned": learned}, baselines=families, reference=False, wall=False)
    assert set(entry["methods"]) == {"learned", "recursive_blend_clip", "recursive_clip"}


def test_prs_lean_model_at_zero_modulation_is_its_classical_rule_on_a_three_body_system():
    """A prs_lean model with its last layer zeroed runs the classical recursive_prs_lean_clip at ETA0 (the same run to
    rounding) on the Pythagorean problem, not the blend rule; the board runs that family."""
    cfg = bounded_cfg("prs_lean", max_modulation=3.0, recursion_clip=1.2)
    pyth = {s.name: s for s in SB.practitioner_systems()}["pythagorean"]
    pyth = SB.System("pyth1", "problem", "test", {}, pyth.m, pyth.x, pyth.v, 5.0, bounded=False)
    learned = learned_methods(build_payload(0, classical_model(cfg).state_dict(), None, cfg, NormScales().to_dict()),
                              eps=0.0)["learned"]
    runs = {name: SB.run_method(method, pyth, 1, 200_000).metrics for name, method in
            (("learned", learned), ("lean", SB.make_baseline("recursive_prs_lean_clip", ETA0)),
             ("blend", SB.make_baseline("recursive_blend_clip", ETA0)))}
    assert runs["learned"]["force_evals"] == runs["lean"]["force_evals"] > 300
    assert runs["learned"]["max_rel_dE"] == pytest.approx(runs["lean"]["max_rel_dE"], rel=1e-6)
    assert runs["blend"]["force_evals"] != runs["lean"]["force_evals"]
    assert "recursive_prs_lean_clip" in SB.families_for(pyth)


def test_prs_lean_rule_is_time_reversible_on_a_kepler_orbit_and_a_three_body_system():
    """A wild prs_lean bounded recursion (clipped at 1.2, as configured) retraces 2000 steps to 1e-10 when the
    velocities are reversed, on Kepler e = 0.9 and on the hierarchical triple, where the clip never acts."""
    cfg = bounded_cfg("prs_lean", max_modulation=3.0, recursion_clip=1.2)
    rule = learned_methods(build_payload(0, wild_model(cfg, 0.5).state_dict(), None, cfg, NormScales().to_dict()),
                           eps=0.0)["learned"]
    for system in (SB.kepler_system(0.9, 1.0, 1, "kepler", dim=3), SB.hierarchical_triple(1, dim=3)):
        rule.start(None)
        assert forward_back(rule, system.m, system.x, system.v, 2000) < 1e-10
        assert rule.run_metrics()["clip_acts"] == 0


def test_prs_lean_config_is_the_apsis_hinge_config_with_the_prs_lean_timescale():
    from aits import Config

    assert config_changes("configs/generalist_apsis_hinge.yaml", "configs/generalist_prs_lean.yaml") == {
        ("run", "name"), ("features", "timescale")}
    assert Config.load("configs/generalist_prs_lean.yaml").features.timescale == "prs_lean"


def test_prs_point_lean_config_is_the_prs_lean_config_with_its_timescale():
    from aits import Config

    assert config_changes("configs/generalist_prs_lean.yaml", "configs/generalist_prs_point_lean.yaml") == {
        ("run", "name"), ("features", "timescale")}
    assert Config.load("configs/generalist_prs_point_lean.yaml").features.timescale == "prs_point_lean"


def test_tau_hinge_config_is_the_prs_point_lean_config_with_tau_in_the_hinge():
    from aits import Config

    assert config_changes("configs/generalist_prs_point_lean.yaml", "configs/generalist_tau_hinge.yaml") == {
        ("run", "name"), ("train", "passage_hinge_timescales")}
    assert Config.load("configs/generalist_tau_hinge.yaml").train.passage_hinge_timescales == ["nn"]


def test_soft_config_is_the_blend_config_with_the_soft_blend_timescale():
    from aits import Config

    assert config_changes("configs/generalist_blend.yaml", "configs/generalist_soft.yaml") == {
        ("run", "name"), ("features", "timescale")}
    assert Config.load("configs/generalist_soft.yaml").features.timescale == "soft_blend"


def test_prs_point_lean_rule_is_time_reversible_where_its_hand_back_acts():
    """The recommended timescale hands the lean back to the soft blend over f = 0-0.05, its steepest stretch: a wild
    prs_point_lean recursion on the hierarchical triple softened so that its inner pair sits there (f = 0.014 at
    the start) retraces 2000 steps when the velocities are reversed, and its step is neither prs_lean's nor the
    soft blend's there."""
    t = SB.hierarchical_triple(1, dim=3)
    eps = 1e-3
    rules = {}
    for ts in ("prs_lean", "soft_blend", "prs_point_lean"):
        cfg = bounded_cfg(ts, max_modulation=3.0, recursion_clip=1.2)
        rules[ts] = learned_methods(build_payload(0, wild_model(cfg, 0.5).state_dict(), None, cfg,
                                                  NormScales().to_dict()), eps=eps)["learned"]
    a = I.accel(t.x, t.m, eps)
    h = {ts: rule.h(t.x, t.v, a, t.m) for ts, rule in rules.items()}
    assert min(abs(math.log(h["prs_point_lean"] / h[ts])) for ts in ("prs_lean", "soft_blend")) > 1e-3
    rule = rules["prs_point_lean"]
    rule.start(None)
    assert forward_back(rule, t.m, t.x, t.v, 2000, eps=eps) < 1e-10
    assert rule.run_metrics()["clip_acts"] == 0
