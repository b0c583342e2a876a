"""The passage objective (aits/passage.py): its rollout is the scoreboard's integrator, it is
scale-free, it trains, and it is off (bit for bit the seed) by default."""
from __future__ import annotations

import math

import numpy as np
import pytest
import rebound
import torch

from actors import Collector
from aits import Config, ConfigError, NormScales, Samples, Stepper, apply_passage, make_optimizer, passage_gradient
from aits import integrators as I
from aits.passage import classical_rows, objective_rows, rollout
from aits.samples import StateBatch
from driver.train import main
from aits.physics import kepler_ic
from aits.model import NumpyMLP, build_model
from aits.policy import FactorStep
from aits.systems import Systems

from helpers import (assert_same_weights, broken_compile, classical_model, config_changes, factor_cfg, final_weights,
                     kepler_samples, perturbed_model, rows, strip_timing, write_config)

# A tiny run of the recommended mode: scale-free factor rule, step recursion, passage objective on.
PASSAGE = dict(features={"feature_type": "scale_free", "history_len": 0, "normalize_inputs": "none"},
               model={"output": "factor", "init_factor": 0.02, "symmetric_iterations": 0, "recursive": True,
                      "init_dt": None},
               train={"passage": True, "passage_steps": 30, "passage_batch": 4, "band_on_accept": False})


MODES = {"explicit": {"symmetric_iterations": 0}, "symmetric": {"symmetric_iterations": 1},
         "recursive": {"symmetric_iterations": 0, "recursive": True}}


MODES_METHOD = {"explicit": lambda h: I.PolicyStep(lambda s: h(s.x, s.v, s.a, s.m), "learned"),
                "symmetric": lambda h: I.SymmetricPolicy(h, 1, "learned"),
                "recursive": lambda h: I.RecursivePolicy(h, "learned")}


@pytest.mark.parametrize("mode", list(MODES))
def test_rollout_is_the_scoreboard_integrator(mode):
    """The differentiable rollout takes the steps the numpy evaluation loop takes, with the same
    energy errors: what training optimises is what the scoreboard measures."""
    cfg = factor_cfg(**MODES[mode])
    model = perturbed_model(cfg)
    stepper = Stepper(cfg, NormScales())
    m, x, v, _ = kepler_ic(0.9, 1.0)
    with torch.no_grad():
        errs, T, tau0 = rollout(model, stepper, m[None], x[None], v[None], 120)
    h = FactorStep(NumpyMLP(model, cfg.model.activation), 0.0)
    method = MODES_METHOD[mode](h)
    run = I.integrate(method, m, x, v, 1e9, max_steps=120)
    if mode == "recursive":  # the recursion's steps are not the explicit rule's steps dt = h
        explicit = I.integrate(MODES_METHOD["explicit"](h), m, x, v, 1e9, max_steps=120)
        assert np.abs(run.trajectory["dt"][2:] / explicit.trajectory["dt"][2:] - 1).max() > 1e-3
    assert run.metrics["status"] == "max_steps"
    assert float(T[0]) == pytest.approx(run.trajectory["t"][-1], rel=1e-10)
    e = run.trajectory["E"]
    np.testing.assert_allclose(errs[0].numpy(), np.abs((e[1:] - e[0]) / e[0]), rtol=1e-7, atol=1e-15)
    assert float(tau0[0]) == pytest.approx(I.timescale(x, I.accel(x, m)), rel=1e-12)


def test_band_measure_is_the_energy_band_of_the_scoreboard_run():
    """train.passage_measure: band: the rollout's errors are the band so far, whose last value is the band
    (max E - min E) / |E0| of the numpy evaluation's run over the same steps (E0 included)."""
    cfg = factor_cfg(symmetric_iterations=0, recursive=True)
    band_cfg = Config.from_dict(cfg.to_dict(), ["train.passage_measure=band"])
    model = perturbed_model(cfg)
    m, x, v, _ = kepler_ic(0.9, 1.0)
    with torch.no_grad():
        plain = rollout(model, Stepper(cfg, NormScales()), m[None], x[None], v[None], 300)[0][0].numpy()
        band = rollout(model, Stepper(band_cfg, NormScales()), m[None], x[None], v[None], 300)[0][0].numpy()
    run = I.integrate(MODES_METHOD["recursive"](FactorStep(NumpyMLP(model, cfg.model.activation), 0.0)), m, x, v,
                      1e9, max_steps=300)
    e = run.trajectory["E"]
    assert band[-1] == pytest.approx((e.max() - e.min()) / abs(e[0]), rel=1e-7)
    assert np.all(np.diff(band) >= 0) and np.all(band >= plain * (1 - 1e-12))  # a running band, never below |dE/E|
    assert band[-1] <= 2 * plain.max() * (1 + 1e-12) and band[-1] > plain.max() * 1.01  # here both edges count
    with pytest.raises(ConfigError, match="train.passage_measure"):
        Config.from_dict(cfg.to_dict(), ["train.passage_measure=range"])


@pytest.mark.parametrize("mode", ["symmetric", "recursive"])
def test_objective_is_scale_free(mode):
    """Lengths x L, masses x M: the same relative errors and the same time covered in units of tau0."""
    cfg = factor_cfg(**MODES[mode])
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
    """Steps on the passage gradient of one fixed batch lower its objective (it trains what it measures)."""
    cfg = Config.from_dict({**factor_cfg().to_dict(),
                            "train": {"passage": True, "passage_steps": 150, "passage_batch": 3, "lr": 3e-3}})
    model = perturbed_model(cfg)
    stepper = Stepper(cfg, NormScales())
    opt = make_optimizer(model, cfg)
    samples = kepler_samples([0.5, 0.8, 0.95])
    losses = []
    for _ in range(6):
        grads, m = passage_gradient(model, samples, stepper, cfg, np.random.default_rng(0))
        assert grads is not None and m["passage/skipped"] == 0
        assert all(p.grad is None for p in model.parameters())  # left cleared
        assert apply_passage(model, opt, [grads])
        losses.append(m["passage/loss"])
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses


def test_learner_steps_on_the_mean_of_the_collectors_gradients():
    cfg = factor_cfg()
    model = perturbed_model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g1 = {n: torch.full_like(p, 1.0) for n, p in model.named_parameters()}
    g2 = {n: torch.full_like(p, 3.0) for n, p in model.named_parameters()}
    assert apply_passage(model, torch.optim.SGD(model.parameters(), lr=0.5), [g1, None, g2])
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - 0.5 * 2.0, rtol=0, atol=1e-15)
    bad = {n: torch.full_like(p, math.nan) for n, p in model.named_parameters()}
    assert not apply_passage(model, torch.optim.SGD(model.parameters(), lr=0.5), [g1, bad])
    assert not apply_passage(model, torch.optim.SGD(model.parameters(), lr=0.5), [])


def test_collector_ships_its_gradient_with_the_samples():
    cfg = Config.from_dict({**factor_cfg().to_dict(), "train": {"passage": True, "passage_steps": 20,
                                                                 "passage_batch": 2, "steps_per_epoch": 3},
                            "ray": {"systems_per_collector": 2}})
    col = Collector(cfg.to_dict(), NormScales().to_dict(), 0)
    weights = perturbed_model(cfg).state_dict()
    samples, metrics = col.collect(weights)
    names = {n for n, _ in perturbed_model(cfg).named_parameters()}
    assert set(samples.passage) == names and math.isfinite(metrics["passage/loss"])
    # computed at the broadcast weights: the same gradient as passage_gradient on them
    model = perturbed_model(cfg)
    again, _ = passage_gradient(model, samples, Stepper(cfg, NormScales()), cfg, np.random.default_rng([5, 2, 0]))
    for n in names:
        torch.testing.assert_close(samples.passage[n], again[n], rtol=0, atol=0)
    assert Samples.concat([samples, samples]).passage is None and "passage" not in samples.to_dict()


def test_ray_and_inprocess_identical_and_resume_exact_with_passage(ray_session, tmp_path, capsys):
    ray_cfg = write_config(tmp_path, name="ray", **{**PASSAGE, "train": {**PASSAGE["train"], "epochs": 3}})
    local = dict(PASSAGE, ray={"inprocess": True}, train={**PASSAGE["train"], "epochs": 3}, run={"checkpoint_interval": 5})
    local_cfg = write_config(tmp_path, name="local", **local)
    assert main(["--config", ray_cfg]) == 0
    assert main(["--config", local_cfg]) == 0
    ray_rows = rows(tmp_path / "runs" / "ray")
    assert all(r["passage/applied"] == 1.0 and math.isfinite(r["passage/loss"]) for r in ray_rows)
    assert_same_weights(final_weights(tmp_path / "runs" / "ray"), final_weights(tmp_path / "runs" / "local"))
    assert strip_timing(ray_rows) == strip_timing(rows(tmp_path / "runs" / "local"))
    cut_cfg = write_config(tmp_path, name="cut", **local)
    assert main(["--config", cut_cfg, "--set", "run.duration=0.001"]) == 0  # stops after epoch 1
    assert main(["--config", cut_cfg, "--resume", "auto"]) == 0
    assert "Resumed from epoch 1" in capsys.readouterr().out
    assert_same_weights(final_weights(tmp_path / "runs" / "local"), final_weights(tmp_path / "runs" / "cut"))


def test_off_by_default_and_needs_scale_free_features():
    cfg = factor_cfg()
    assert cfg.train.passage is False
    col = Collector(cfg.to_dict(), NormScales().to_dict(), 0)
    samples, metrics = col.collect(perturbed_model(cfg).state_dict())
    assert samples.passage is None and not any(k.startswith("passage/") for k in metrics)
    with pytest.raises(ConfigError, match="train.passage"):
        Config.from_dict({"train": {"passage": True}, "features": {"feature_type": "delta_mag"}})


def test_anchor_holds_the_level_at_the_classical_eta():
    """train.passage_anchor: the rollouts' level (mean log dt/tau) is reported, and with the anchor on, steps
    on the passage gradient move a level set off log eta0 back towards it; without it they do not."""
    base = {**factor_cfg(recursive=True, symmetric_iterations=0, max_modulation=3.0, init_factor=0.01).to_dict()}
    samples = kepler_samples([0.5, 0.8, 0.95])
    moved = {}
    for anchor in (0.0, 50.0):
        cfg = Config.from_dict({**base, "train": {"passage": True, "passage_steps": 100, "passage_batch": 3,
                                                  "lr": 1e-2, "passage_anchor": anchor}})
        model = build_model(cfg)
        with torch.no_grad():  # the untrained bounded model at g = 0.01 * 3^tanh(0.6) = 0.019: level off by 0.59
            model.net[-1].bias.add_(0.6)
        stepper, opt = Stepper(cfg, NormScales()), make_optimizer(model, cfg)
        levels = []
        for _ in range(8):
            grads, m = passage_gradient(model, samples, stepper, cfg, np.random.default_rng(0))
            levels.append(m["passage/level"])
            assert apply_passage(model, opt, [grads])
        moved[anchor] = levels
    target = math.log(0.01)
    assert moved[0.0][0] == pytest.approx(target + math.log(3.0) * math.tanh(0.6), abs=0.05)
    # anchored: the level comes most of the way back; free: it stays off
    assert abs(moved[50.0][-1] - target) < 0.5 * abs(moved[50.0][0] - target), moved
    assert abs(moved[0.0][-1] - target) > 0.8 * abs(moved[0.0][0] - target), moved


def test_row_anchor_holds_each_rollouts_level():
    """train.passage_anchor_rows: the anchor term is weight x the mean over rollouts of (level - log eta0)^2, not
    weight x (mean level - log eta0)^2: the two gradients differ by weight x the gradient of the levels'
    variance across rollouts (computed here from the rollouts' own levels); it needs the anchor on."""
    base = factor_cfg(recursive=True, symmetric_iterations=0, max_modulation=3.0, init_factor=0.01).to_dict()
    samples = kepler_samples([0.5, 0.95])
    grads = {}
    for rows in (False, True):
        cfg = Config.from_dict({**base, "train": {"passage": True, "passage_steps": 60, "passage_batch": 2,
                                                  "passage_anchor": 5.0, "passage_anchor_rows": rows}})
        grads[rows], _ = passage_gradient(perturbed_model(cfg), samples, Stepper(cfg, NormScales()), cfg,
                                          np.random.default_rng(0))
    model = perturbed_model(cfg)
    idx = np.random.default_rng(0).choice(2, size=2, replace=False)  # passage_gradient's draw of the states
    _, _, _, level = rollout(model, Stepper(cfg, NormScales()), samples.m[idx], samples.x[idx], samples.v[idx], 60,
                             with_level=True)
    assert abs(float((level[0] - level[1]).detach())) > 1e-3  # the perturbed rule's levels differ from orbit to orbit
    (5.0 * level.var(unbiased=False)).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[True][name] - grads[False][name], p.grad, rtol=1e-7,
                                   atol=1e-9 * float(p.grad.abs().max()))
    with pytest.raises(ConfigError, match="train.passage_anchor_rows"):
        Config.from_dict({**base, "train": {"passage_anchor_rows": True}})


def test_anchor_needs_init_factor():
    with pytest.raises(ConfigError, match="train.passage_anchor"):
        Config.from_dict({**factor_cfg().to_dict(), "model": {"output": "factor", "init_factor": None},
                          "train": {"passage_anchor": 1.0}})


def test_compiled_rollout_takes_the_eager_steps():
    """train.compile_rollout: the rollout through torch.compile is the eager rollout (the blend timescale,
    the clipped recursion, a padded mixture batch), errors, times and the passage gradient alike, to
    rounding (the fused kernels regroup sums)."""
    base = {"system": {"ic": "mixture", "mixture": {"binary": 1, "triple": 1, "planets": 1}, "num_particles": 4,
                       "dim": 3},
            "features": {"feature_type": "scale_free", "timescale": "blend"},
            "model": {"hidden_dims": [16, 16], "output": "factor", "init_factor": 0.02, "max_modulation": 3.0,
                      "recursive": True, "recursion_clip": 1.2}, "run": {"seed": 3}}
    cfgs = [Config.from_dict({**base, "train": {"compile_rollout": c}}) for c in (False, True)]
    model = perturbed_model(cfgs[0])
    systems = Systems.for_collector(cfgs[0], 0, 6)
    out = []
    for cfg in cfgs:
        errs, T, tau0, level = rollout(model, Stepper(cfg, NormScales()), systems.m, systems.x, systems.v, 40,
                                       with_level=True)
        model.zero_grad()
        (errs.max(-1).values.log().mean() - 2 * T.log().mean() + level.mean() ** 2).backward()
        out.append((errs.detach(), T.detach(), tau0, level.detach(),
                    torch.cat([p.grad.flatten() for p in model.parameters()])))
    (e0, t0, tau_0, l0, g0), (e1, t1, tau_1, l1, g1) = out
    assert float(e0.max()) > 1e-9 and len(set(systems.family.tolist())) > 1  # real errors, several families
    np.testing.assert_allclose(e1.numpy(), e0.numpy(), rtol=1e-7, atol=1e-16)
    np.testing.assert_allclose(t1.numpy(), t0.numpy(), rtol=1e-12)
    np.testing.assert_allclose(tau_1.numpy(), tau_0.numpy(), rtol=1e-12)
    np.testing.assert_allclose(l1.numpy(), l0.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g1.numpy(), g0.numpy(), rtol=1e-6, atol=1e-9 * float(g0.abs().max()))


def test_a_failed_compile_falls_back_to_the_eager_steps(monkeypatch):
    """train.compile_rollout where torch.compile cannot build (no C++ compiler): one warning, then the eager
    rollout's steps, bit for bit."""
    cfg = factor_cfg(symmetric_iterations=0, recursive=True)
    compiled_cfg = Config.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "compile_rollout": True}})
    model = perturbed_model(cfg)
    m, x, v, _ = kepler_ic(0.9, 1.0)

    monkeypatch.setattr(torch, "compile", broken_compile)
    with torch.no_grad():
        eager = rollout(model, Stepper(cfg, NormScales()), m[None], x[None], v[None], 50)
        with pytest.warns(UserWarning, match=r"compile failed \(RuntimeError: InvalidCxxCompiler.*rollouts run eager"):
            fallback = rollout(model, Stepper(compiled_cfg, NormScales()), m[None], x[None], v[None], 50)
    for a, b in zip(eager, fallback):
        assert torch.equal(a, b)


def test_hinge_presses_where_the_rule_is_worse_than_its_classical_rule():
    """train.passage_hinge: the classical rows are the bounded factor at eta0 (whatever the hidden layers), the
    model is left as it was, and the hinge adds lambda x the gradient of the rows worse than the classical rule."""
    base = factor_cfg(recursive=True, symmetric_iterations=0, max_modulation=3.0, init_factor=0.01).to_dict()
    cfg = Config.from_dict({**base, "train": {"passage": True, "passage_steps": 120, "passage_batch": 3,
                                              "lr": 1e-2, "passage_hinge": 10.0}})
    samples = kepler_samples([0.5, 0.8, 0.95])
    start = (samples.m, samples.x, samples.v)
    model, stepper = perturbed_model(cfg, scale=0.5), Stepper(cfg, NormScales())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classical = classical_rows(model, stepper, *start, 120)
    assert_same_weights(before, model.state_dict())
    other = classical_model(cfg)  # other hidden layers, last layer zeroed: the same rule
    expect, keep = objective_rows(*rollout(other, Stepper(cfg, NormScales()), *start, 120))
    assert bool(keep.all()) and torch.allclose(classical, expect, rtol=0, atol=1e-12)

    # the hinge's gradient is lambda times the mean over the rollouts of the gradients of the worse-than-eta0 rows
    grads = {h: passage_gradient(model, samples, stepper, Config.from_dict({**cfg.to_dict(), "train": {
        **cfg.to_dict()["train"], "passage_hinge": h}}), np.random.default_rng(0)) for h in (0.0, 10.0)}
    got, _ = objective_rows(*rollout(model, Stepper(cfg, NormScales()), *start, 120))
    worse = got.detach() > classical
    assert 0 < int(worse.sum()) < 3  # the perturbed rule is worse than eta0 on some orbits, not all
    assert grads[10.0][1]["passage/worse_than_classical"] == pytest.approx(float(worse.double().mean()))
    model.zero_grad(set_to_none=True)
    (10.0 * got[worse].sum() / 3).backward()
    for name, p in model.named_parameters():
        hinge = grads[10.0][0][name] - grads[0.0][0][name]
        assert torch.allclose(hinge, p.grad, rtol=1e-6, atol=1e-9 * float(p.grad.abs().max())), name


def test_hinge_timescales_take_the_best_classical_rule_of_each_start():
    """train.passage_hinge_timescales: the hinge's reference rows are, per start, the best of the rule's own
    classical recursion (here on prs_lean) and the classical recursions at eta0 on the named timescales (here tau),
    each as a model of that timescale with its last layer zeroed rolls it out; on Kepler orbits the two differ and
    each wins somewhere, and the minimum is taken row by row."""
    base = factor_cfg(recursive=True, symmetric_iterations=0, max_modulation=3.0, init_factor=0.01,
                      recursion_clip=1.2).to_dict()
    cfg = Config.from_dict({**base, "features": {**base["features"], "timescale": "prs_lean"},
                            "train": {"passage": True, "passage_steps": 200, "passage_hinge": 1.0,
                                      "passage_hinge_timescales": ["nn"]}})
    nn_cfg = Config.from_dict({**cfg.to_dict(), "features": {**cfg.to_dict()["features"], "timescale": "nn"}})
    samples = kepler_samples([0.3, 0.6, 0.9, 0.97])
    start = (samples.m, samples.x, samples.v)
    model, stepper = perturbed_model(cfg, scale=0.5), Stepper(cfg, NormScales())
    got = classical_rows(model, stepper, *start, 200, None, cfg.train.passage_hinge_timescales)
    own = classical_rows(model, Stepper(cfg, NormScales()), *start, 200)
    tau, keep = objective_rows(*rollout(classical_model(nn_cfg), Stepper(nn_cfg, NormScales()), *start, 200))
    assert bool(keep.all()) and torch.isfinite(own).all()
    assert bool((tau < own - 0.01).any()) and bool((own < tau - 0.01).any())  # each rule wins on some orbit
    assert torch.allclose(got, torch.minimum(own, tau), rtol=0, atol=1e-12)
    # the twin is kept with the stepper (made once), and the rule's own stepper still rolls out prs_lean
    assert list(stepper.timescale_twins) == ["nn"] and stepper.timescale == "prs_lean"


def test_hinge_needs_the_bounded_factor():
    with pytest.raises(ConfigError, match="train.passage_hinge"):
        Config.from_dict({**factor_cfg().to_dict(), "train": {"passage_hinge": 1.0}})


def test_apsis_share_of_rollouts_starts_from_fresh_draws_at_an_apsis():
    """train.passage_apsis: that share of the rollouts' start states is replaced by fresh mixture draws whose
    Kepler orbits start at an apsis (r . v = 0 in the pair's relative orbit; REBOUND's true anomaly 0 or pi),
    padded with massless bodies; the other rows are the accepted states, untouched; off (0) leaves the
    gradient bit for bit; outside a mixture it is refused."""
    from aits.passage import with_apsis_starts
    cfg = Config.from_dict({}, ["system.ic=mixture", "system.num_particles=4", "system.dim=3",
                                "system.mixture={binary: 1}", "train.passage_apsis=0.25"])
    B, rng = 16, np.random.default_rng(3)
    start = (np.full((B, 4), 7.0), np.full((B, 4, 3), 2.0), np.full((B, 4, 3), -1.0))
    (m, x, v), eps, fam = with_apsis_starts(start, None, cfg, rng)
    assert fam is None  # no families in, none out
    assert eps is None and np.array_equal(m[:12], start[0][:12]) and np.array_equal(x[:12], start[1][:12])
    assert np.array_equal(start[0], np.full((B, 4), 7.0))  # the caller's arrays are not written
    # a whole batch at share 1, with softenings carried: the run's own where a family has none
    soft = Config.from_dict(cfg.to_dict(), ["train.passage_apsis=1", "system.softening=0.01"])
    (m1, x1, v1), eps1, _ = with_apsis_starts(start, np.full(B, 0.5), soft, np.random.default_rng(4))
    assert np.array_equal(eps1, np.full(B, 0.01))
    apses = []
    for mm, xx, vv in [(m[r], x[r], v[r]) for r in range(12, 16)] + list(zip(m1, x1, v1)):
        assert mm[0] == 1.0 and 0 < mm[1] <= 1 and np.all(mm[2:] == 0)
        sim = rebound.Simulation()
        for k in range(2):
            sim.add(m=mm[k], x=xx[k, 0], y=xx[k, 1], z=xx[k, 2], vx=vv[k, 0], vy=vv[k, 1], vz=vv[k, 2])
        f = abs(math.remainder(sim.particles[1].orbit().f, 2 * math.pi))
        assert min(f, abs(f - math.pi)) < 1e-6, f
        apses.append(f < 1)
    assert 0.2 < np.mean(apses) < 0.8  # pericentre and apocentre both (20 draws)
    # off: passage_gradient's rollouts and gradient are those of the plain config, bit for bit
    plain = Config.from_dict({**factor_cfg().to_dict(), "train": {"passage": True, "passage_steps": 40,
                                                                   "passage_batch": 3}})
    zero = Config.from_dict(plain.to_dict(), ["train.passage_apsis=0"])
    samples = kepler_samples([0.5, 0.8, 0.95])
    g1, _ = passage_gradient(perturbed_model(plain), samples, Stepper(plain, NormScales()), plain,
                             np.random.default_rng(0))
    g0, _ = passage_gradient(perturbed_model(zero), samples, Stepper(zero, NormScales()), zero,
                             np.random.default_rng(0))
    for name in g1:
        torch.testing.assert_close(g0[name], g1[name], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="train.passage_apsis"):
        Config.from_dict({}, ["system.ic=kepler", "train.passage_apsis=0.5"])


def test_family_aware_apsis_starts_move_only_the_named_families():
    """train.passage_apsis_families: of the rows whose accepted state belongs to a named family, the last
    round(s n) each start from a fresh draw of its own family at an apsis; the other families' rows keep
    their accepted states (the few-body rollouts still start from their close encounters); without each
    state's family it is refused in one line."""
    from aits.families import FAMILIES
    from aits.passage import with_apsis_starts
    cfg = Config.from_dict({}, ["system.ic=mixture", "system.num_particles=4", "system.dim=3",
                                "system.mixture={binary: 0.5, triple: 0.3, few_body: 0.2}", "train.passage_apsis=1",
                                "train.passage_apsis_families=[binary, triple]"])
    codes = {f: FAMILIES.index(f) for f in ("binary", "triple", "few_body")}
    family = np.array([codes["few_body"], codes["binary"], codes["triple"], codes["few_body"], codes["binary"],
                       codes["binary"]])
    B = len(family)
    start = (np.full((B, 4), 7.0), np.full((B, 4, 3), 2.0), np.full((B, 4, 3), -1.0))
    (m, x, v), _, fam = with_apsis_starts(start, None, cfg, np.random.default_rng(5), family)
    assert np.array_equal(fam, family)  # each moved row is a draw of its own family
    few = family == codes["few_body"]
    assert np.array_equal(m[few], start[0][few]) and np.array_equal(x[few], start[1][few])
    # each moved row is a fresh system of its own family: a padded binary, a triple of three massive bodies
    assert [(mm > 0).sum() for mm in m[~few]] == [2, 3, 2, 2] and not np.any(m[~few] == 7.0)
    for r in np.flatnonzero(family == codes["binary"]):
        rel_x, rel_v = x[r, 1] - x[r, 0], v[r, 1] - v[r, 0]
        assert abs(rel_x @ rel_v) < 1e-9 * np.linalg.norm(rel_x) * np.linalg.norm(rel_v)  # at an apsis
    # share 0.5 of the 4 named rows: the last 2 of them (rows 4 and 5); rows 1 and 2 are kept
    half = Config.from_dict(cfg.to_dict(), ["train.passage_apsis=0.5"])
    (m2, _, _), _, _ = with_apsis_starts(start, None, half, np.random.default_rng(5), family)
    assert np.array_equal(m2[:4], start[0][:4]) and not np.any(m2[4:] == 7.0)
    with pytest.raises(ValueError, match="train.passage_apsis_families"):
        with_apsis_starts(start, None, cfg, np.random.default_rng(5), None)
    with pytest.raises(ConfigError, match="train.passage_apsis_families: unknown family 'binry'"):
        Config.from_dict({}, ["train.passage_apsis_families=[binry]"])


def test_family_weights_weigh_each_rollout_by_its_family():
    """train.passage_family_weights: the objective is the weighted mean of the rollouts' objectives, each
    weighted by its start state's family (1 for a family not named): its gradient is that weighted mean of
    the single rollouts' gradients; weight 0 drops a family; states without a family are refused in one line."""
    from aits.families import FAMILIES
    base = Config.from_dict({**factor_cfg().to_dict(), "train": {"passage": True, "passage_steps": 40,
                                                                  "passage_batch": 3}},
                            ["system.ic=mixture", "system.mixture={binary: 1, few_body: 1}", "system.num_particles=3"])
    es, fams = [0.5, 0.8, 0.95], ["binary", "binary", "few_body"]  # two-body states, labelled with families

    def samples(rows):
        s = kepler_samples([es[r] for r in rows])
        s.family[:] = [FAMILIES.index(fams[r]) for r in rows]
        return s

    def grad(cfg, rows):
        g, _ = passage_gradient(perturbed_model(cfg), samples(rows), Stepper(cfg, NormScales()), cfg,
                                np.random.default_rng(0))
        return g

    one = [grad(base, [r]) for r in range(3)]
    weighted = Config.from_dict(base.to_dict(), ["train.passage_family_weights={few_body: 3}"])
    g = grad(weighted, [0, 1, 2])
    for name in g:
        want = (one[0][name] + one[1][name] + 3 * one[2][name]) / 5
        torch.testing.assert_close(g[name], want, rtol=1e-9, atol=1e-12 * float(want.abs().max()))
        # the plain mean differs: the weights act
        assert not torch.allclose(g[name], (one[0][name] + one[1][name] + one[2][name]) / 3, rtol=1e-3, atol=0)
    dropped = grad(Config.from_dict(base.to_dict(), ["train.passage_family_weights={binary: 0}"]), [0, 1, 2])
    for name in dropped:
        torch.testing.assert_close(dropped[name], one[2][name], rtol=1e-9, atol=1e-12 * float(one[2][name].abs().max()))
    with pytest.raises(ValueError, match="train.passage_family_weights: the start states carry no family"):
        passage_gradient(perturbed_model(weighted), kepler_samples(es), Stepper(weighted, NormScales()), weighted,
                         np.random.default_rng(0))
    with pytest.raises(ConfigError, match="train.passage_family_weights: unknown family 'few_bdy'"):
        Config.from_dict({}, ["train.passage_family_weights={few_bdy: 2}"])
    with pytest.raises(ConfigError, match="train.passage_family_weights: weighs the families of system.ic mixture"):
        Config.from_dict({}, ["system.ic=kepler", "train.passage_family_weights={binary: 2}"])
    with pytest.raises(ConfigError, match="every family the mixture draws has weight 0"):
        Config.from_dict({}, ["system.ic=mixture", "system.mixture={binary: 1}",
                              "train.passage_family_weights={binary: 0}"])


def jumps_case():
    """(cfg, samples, start, model, stepper) of the jumps terms' tests: a perturbed recursive factor rule, 80-step
    rollouts from three Kepler orbits."""
    base = factor_cfg(recursive=True, symmetric_iterations=0, max_modulation=3.0, init_factor=0.01).to_dict()
    cfg = Config.from_dict({**base, "train": {"passage": True, "passage_steps": 80, "passage_batch": 3, "lr": 1e-2}})
    samples = kepler_samples([0.5, 0.8, 0.95])
    return cfg, samples, (samples.m, samples.x, samples.v), perturbed_model(cfg, scale=0.5), Stepper(cfg, NormScales())


def stepwise(model, stepper, start, steps: int):
    """A rollout from ``start`` taken step by step with the stepper's own step function, without grad: each step's
    (dt, tau, h), stacked (B, steps)."""
    prep = stepper.prepare(StateBatch.start(*start))
    x, v, a, dt, out = prep.x, prep.v, prep.acc0, torch.zeros_like(prep.e0), []
    with torch.no_grad():
        for _ in range(steps):
            dt, x, v, a, _, tau, h = stepper.rollout_step(model, x, v, a, prep.m, prep.e0, dt, prep.eps)
            out.append((dt, tau, h))
    return tuple(torch.stack(col, -1) for col in zip(*out))


def test_jumps_term_is_the_mean_squared_step_to_step_change_of_log_dt_over_tau():
    """train.passage_jumps: rollout's ``with_jumps`` is each rollout's mean over its steps of the squared change of
    log(dt / tau) from one step to the next, recomputed here from the steps themselves; the term adds lambda x its
    gradient to the objective's and logs ``passage/jumps``; off (0) the gradient is the objective's alone."""
    cfg, samples, start, model, stepper = jumps_case()
    *_, jumps = rollout(model, stepper, *start, 80, with_jumps=True)
    dt, tau, _ = stepwise(model, stepper, start, 80)  # the same rollout, step by step
    lv = torch.log(dt / tau)
    expect = ((lv[:, 1:] - lv[:, :-1]) ** 2).mean(-1)
    assert torch.allclose(jumps.detach(), expect, rtol=1e-9, atol=0) and bool((expect > 0).all())

    def grads(lam):
        c = Config.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "passage_jumps": lam}})
        return passage_gradient(model, samples, stepper, c, np.random.default_rng(0))

    (g0, m0), (g1, m1) = grads(0.0), grads(100.0)
    assert "passage/jumps" not in m0 and m1["passage/jumps"] == pytest.approx(float(jumps.detach().mean()), rel=1e-9)
    model.zero_grad(set_to_none=True)
    (100.0 * rollout(model, stepper, *start, 80, with_jumps=True)[-1].mean()).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(g1[name] - g0[name], p.grad, rtol=1e-6, atol=1e-9 * float(p.grad.abs().max())), name


def test_factor_jumps_term_counts_the_factor_s_jumps_beyond_the_tolerance_and_not_the_alternating_mode():
    """train.passage_factor_jumps: rollout's ``factor_tolerance`` gives each rollout's sum over its steps of
    max(0, |log g_k - log g_(k-1)| - tolerance)^2, g = h / tau recomputed here from the stepper's own steps. The
    classical rule (g = eta0 everywhere) has none although its dt alternates (the jumps term counts that); the
    term adds lambda x its gradient to the objective's and logs ``passage/factor_jumps``."""
    cfg, samples, start, model, stepper = jumps_case()
    _, tau, h = stepwise(model, stepper, start, 80)
    change = torch.diff(torch.log(h / tau), dim=-1).abs()
    tol = float(change.median())  # half the steps' changes pass free, half count
    got = [rollout(model, stepper, *start, 80, factor_tolerance=t)[-1].detach() for t in (0.0, tol)]
    assert torch.allclose(got[0], (change ** 2).sum(-1), rtol=1e-9, atol=0) and bool((got[0] > 0).all())
    assert torch.allclose(got[1], (torch.relu(change - tol) ** 2).sum(-1), rtol=1e-9, atol=0)
    assert bool((got[1] < 0.9 * got[0]).all())

    flat = classical_model(cfg)
    *_, jumps, fj = rollout(flat, stepper, *start, 80, with_jumps=True, factor_tolerance=0.0)
    assert bool((jumps.detach() > 1e-10).all()) and float(fj.detach().abs().max()) < 1e-20

    def grads(lam):
        train = {**cfg.to_dict()["train"], "passage_factor_jumps": lam, "passage_factor_tolerance": tol}
        return passage_gradient(model, samples, stepper, Config.from_dict({**cfg.to_dict(), "train": train}),
                                np.random.default_rng(0))

    (g0, m0), (g1, m1) = grads(0.0), grads(3.0)
    assert "passage/factor_jumps" not in m0
    assert m1["passage/factor_jumps"] == pytest.approx(float(got[1].mean()), rel=1e-9)
    model.zero_grad(set_to_none=True)
    (3.0 * rollout(model, stepper, *start, 80, factor_tolerance=tol)[-1].mean()).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(g1[name] - g0[name], p.grad, rtol=1e-6, atol=1e-9 * float(p.grad.abs().max())), name


def test_smooth_config_is_the_soft_config_with_the_factor_jumps_term():
    assert config_changes("configs/generalist_soft.yaml", "configs/generalist_smooth.yaml") == {
        ("run", "name"), ("train", "passage_factor_jumps")}
    cfg = Config.load("configs/generalist_smooth.yaml")
    assert cfg.train.passage_factor_jumps == 10.0 and cfg.train.passage_factor_tolerance == 0.05


def test_radial_config_is_the_smooth_config_with_the_radial_energy_feature():
    assert config_changes("configs/generalist_smooth.yaml", "configs/generalist_radial.yaml") == {
        ("run", "name"), ("features", "radial_feature")}
    assert Config.load("configs/generalist_radial.yaml").features.radial_feature == "energy"


def test_soft_radial_config_is_the_radial_config_without_the_factor_jumps_term():
    assert config_changes("configs/generalist_soft.yaml", "configs/generalist_soft_radial.yaml") == {
        ("run", "name"), ("features", "radial_feature")}
    assert config_changes("configs/generalist_radial.yaml", "configs/generalist_soft_radial.yaml") == {
        ("run", "name"), ("train", "passage_factor_jumps")}
    assert Config.load("configs/generalist_soft_radial.yaml").train.passage_factor_jumps == 0.0


def test_apsis_hinge_config_is_the_soft_radial_config_with_apsis_starts_and_the_hinge():
    assert config_changes("configs/generalist_soft_radial.yaml", "configs/generalist_apsis_hinge.yaml") == {
        ("run", "name"), ("train", "passage_apsis"), ("train", "passage_apsis_families"), ("train", "passage_hinge")}
    t = Config.load("configs/generalist_apsis_hinge.yaml").train
    assert (t.passage_apsis, t.passage_apsis_families, t.passage_hinge) == (1.0, ["binary", "triple", "planets"], 1.0)
