"""The two-phase algorithm: retrain loop, collection with warm-up, batched generalisation."""
import math

import numpy as np
import pytest
import torch

from aits import (Config, DtModel, Orbit, Samples, Stepper, auto_norm_scales, band_loss, collect, evaluate,
                  feature_dim, generalize, make_optimizer, retrain_until_accepted)


def make(overrides=None, hidden=(16, 16), init_dt=0.01):
    base = {"features": {"history_len": 2, "feature_type": "delta_mag", "normalize_inputs": "auto"},
            "model": {"hidden_dims": list(hidden), "init_dt": init_dt},
            "train": {"steps_per_epoch": 10, "lr": 1e-3}}
    for sec, vals in (overrides or {}).items():
        base.setdefault(sec, {}).update(vals)
    cfg = Config.from_dict(base)
    stepper = Stepper(cfg, auto_norm_scales(cfg))
    model = DtModel.from_config(cfg, feature_dim(cfg.features.feature_type, cfg.features.history_len)).double()
    return cfg, stepper, model, make_optimizer(model, cfg)


def test_band_loss_values():
    r = torch.tensor([1e-7, 1e-5, 1e-3, float("nan")], dtype=torch.float64)
    loss = band_loss(r, 1e-6, 1e-4)
    y = np.log(np.array([1e-7, 1e-5, 1e-3]) + 1e-12)
    np.testing.assert_allclose(loss[:3].numpy(), [(math.log(1e-6) - y[0]) ** 2, 0.0, (y[2] - math.log(1e-4)) ** 2])
    assert loss[3] == 1.0


def test_rejected_step_retrains_until_accepted():
    cfg, stepper, model, opt = make({"system": {"e_min": 0.9, "e_max": 0.9}}, init_dt=0.2)
    orbit = Orbit(cfg, 0, np.random.default_rng(0))
    prep = stepper.prepare(*orbit.batch())
    first = stepper.attempt(model, prep)
    assert float(first.rel_dE.detach()[0]) > cfg.train.energy_threshold  # starts rejected
    att, accepted, retrains, stuck = retrain_until_accepted(model, opt, stepper, prep, cfg)
    assert accepted and not stuck and retrains > 0
    assert float(att.rel_dE.detach()[0]) < cfg.train.energy_threshold
    # One optimiser step per retrain, none after acceptance.
    steps = [int(s["step"]) for s in opt.state_dict()["state"].values()]
    assert steps and all(s == retrains for s in steps)
    # The dt that passes is smaller than the one that failed.
    assert float(att.dt.detach()[0]) < float(first.dt.detach()[0])


def test_retrain_limit_is_reported_not_raised():
    cfg, stepper, model, opt = make({"system": {"e_min": 0.9, "e_max": 0.9},
                                     "train": {"max_retrain_steps": 2, "lr": 1e-7, "steps_per_epoch": 3}},
                                    init_dt=0.3)
    orbit = Orbit(cfg, 0, np.random.default_rng(0))
    x0 = orbit.x.copy()
    samples, metrics = collect(model, opt, orbit, stepper, cfg)
    assert metrics["collect/retrain_limit_hits"] == 3
    assert metrics["collect/accepted"] == 0 and len(samples) == 0
    np.testing.assert_array_equal(orbit.x, x0)  # a lost slot does not move the orbit


def test_collect_discards_warmup_and_ships_own_history():
    cfg, stepper, model, opt = make({"features": {"history_len": 3}, "train": {"steps_per_epoch": 10}})
    orbit = Orbit(cfg, 7, np.random.default_rng(1))
    s1, m1 = collect(model, opt, orbit, stepper, cfg)
    assert m1["collect/accepted"] == 10 and m1["collect/warmup_discarded"] == 3 and len(s1) == 7
    assert s1.hist_x.shape == (7, 3, 2, 2) and s1.hist_dt.shape == (7, 3)
    assert np.all(s1.rel_dE < cfg.train.energy_threshold) and np.all(s1.orbit_id == 7)
    np.testing.assert_array_equal(s1.step, np.arange(3, 10))
    # Sample k+1's newest history state is sample k's state, with the dt that led to it.
    np.testing.assert_array_equal(s1.hist_x[1:, -1], s1.x[:-1])
    np.testing.assert_array_equal(s1.hist_dt[1:, -1], s1.dt[:-1])
    np.testing.assert_allclose(s1.dt[1:], s1.accepted_dt[:-1])
    s2, m2 = collect(model, opt, orbit, stepper, cfg)  # the orbit continues: no warm-up
    assert len(s2) == 10 and m2["collect/warmup_discarded"] == 0
    np.testing.assert_array_equal(s2.step, np.arange(10, 20))


def test_orbit_restarts_after_periods_and_on_nonfinite():
    cfg, stepper, model, opt = make({"system": {"periods_per_orbit": 0.01}, "train": {"steps_per_epoch": 30}},
                                    init_dt=0.003)
    orbit = Orbit(cfg, 0, np.random.default_rng(2))
    _, metrics = collect(model, opt, orbit, stepper, cfg)
    assert metrics["collect/orbit_restarts"] >= 1 and orbit.restarts == metrics["collect/orbit_restarts"]
    assert orbit.t < 0.01 * orbit.period + 0.1
    restarted = orbit.advance(np.full_like(orbit.x, np.nan), orbit.v, 0.01)
    assert restarted and np.isfinite(orbit.x).all() and orbit.steps == 0 and orbit.history.count == 0


def test_orbit_state_round_trip():
    cfg, *_ = make()
    a = Orbit(cfg, 0, np.random.default_rng(3))
    a.advance(a.x * 1.001, a.v, 0.01)
    b = Orbit(cfg, 1, np.random.default_rng(99))
    b.load_state_dict(a.state_dict())
    for o in (a, b):
        o.restart()
    np.testing.assert_array_equal(a.x, b.x)  # same RNG state -> same next orbit
    assert a.params == b.params


def _samples(cfg, stepper, model, opt, n_orbits=3):
    parts = []
    for i in range(n_orbits):
        orbit = Orbit(cfg, i, np.random.default_rng(10 + i))
        parts.append(collect(model, opt, orbit, stepper, cfg)[0])
    return Samples.concat(parts)


def test_batched_evaluation_equals_one_by_one():
    cfg, stepper, model, opt = make({"train": {"steps_per_epoch": 12}})
    samples = _samples(cfg, stepper, model, opt)
    with torch.no_grad():
        batched = stepper.attempt(model, stepper.prepare_samples(samples))
        single = [stepper.attempt(model, stepper.prepare_samples(samples.take([i]))) for i in range(len(samples))]
    assert len(samples) == 30
    np.testing.assert_allclose(batched.dt.numpy(), [float(a.dt[0]) for a in single], rtol=1e-12)
    # rel_dE is a difference of nearby energies: compare absolutely, at 1e-12.
    np.testing.assert_allclose(batched.rel_dE.numpy(), [float(a.rel_dE[0]) for a in single], rtol=0, atol=1e-12)
    np.testing.assert_allclose(batched.x.numpy(), np.concatenate([a.x.numpy() for a in single]), rtol=1e-12)


def test_generalize_lowers_loss_of_failing_samples():
    cfg, stepper, model, opt = make({"train": {"steps_per_epoch": 15, "generalize_steps": 200}})
    samples = _samples(cfg, stepper, model, opt)
    # Make the model step too far: scale its output bias up so many samples fail.
    with torch.no_grad():
        model.net[-1].bias += 3.0
    before = evaluate(model, stepper, samples)
    failing = before >= cfg.train.energy_threshold
    assert 0 < int(failing.sum())
    loss_before = band_loss(before[failing], cfg.train.E_lower, cfg.train.E_upper).mean()
    metrics = generalize(model, opt, samples, stepper, cfg, np.random.default_rng(0))
    after = evaluate(model, stepper, samples)
    loss_after = band_loss(after[failing], cfg.train.E_lower, cfg.train.E_upper).mean()
    assert metrics["generalize/iterations"] > 0 and metrics["generalize/pass_rate_first"] < 1.0
    assert float(loss_after) < 0.5 * float(loss_before)
    assert float((after >= cfg.train.energy_threshold).double().mean()) < float(failing.double().mean())


def test_generalize_skips_small_sets_and_uses_minibatches():
    cfg, stepper, model, opt = make({"train": {"generalize_min_samples": 100, "steps_per_epoch": 12}})
    samples = _samples(cfg, stepper, model, opt, 1)
    m = generalize(model, opt, samples, stepper, cfg, np.random.default_rng(0))
    assert m["generalize/skipped"] == 1.0 and m["generalize/converged"] == 1.0 and m["generalize/iterations"] == 0


def test_band_on_accept_pushes_small_steps_up_in_collection():
    dts = {}
    for flag in (False, True):
        cfg, stepper, model, opt = make({"train": {"steps_per_epoch": 40, "band_on_accept": flag, "E_lower": 1e-5,
                                                   "lr": 1e-2}},
                                        init_dt=0.0005)
        samples, metrics = collect(model, opt, Orbit(cfg, 0, np.random.default_rng(0)), stepper, cfg)
        assert bool((samples.rel_dE < cfg.train.energy_threshold).all())
        dts[flag] = samples.accepted_dt
    np.testing.assert_allclose(dts[False], 0.0005, rtol=1e-5)  # without it the model keeps its small dt
    assert dts[True][-5:].mean() > 1.5 * dts[False][-5:].mean()


def test_band_on_accept_loss_in_generalize():
    cfg, stepper, model, opt = make({"train": {"steps_per_epoch": 15, "band_on_accept": True, "E_lower": 3e-5,
                                               "generalize_steps": 1, "generalize_batch_size": 1000}})
    samples = _samples(cfg, stepper, model, opt)
    with torch.no_grad():
        model.net[-1].bias += 1.0  # some samples now fail
    r = evaluate(model, stepper, samples)
    t = cfg.train
    failing = r >= t.energy_threshold
    assert 0 < int(failing.sum()) < len(r) and bool((r[~failing] < t.E_lower).any())
    expected = torch.where(failing, band_loss(r, t.E_lower, t.E_upper),
                           band_loss(r, t.E_lower, t.E_upper, lower_only=True)).mean()
    metrics = generalize(model, opt, samples, stepper, cfg, np.random.default_rng(0))
    assert metrics["generalize/iterations"] == 1
    np.testing.assert_allclose(metrics["generalize/loss"], float(expected), rtol=1e-10)
    cfg.train.band_on_accept = False
    with torch.no_grad():
        model.net[-1].bias += 0.5
    r = evaluate(model, stepper, samples)
    failing = r >= t.energy_threshold
    metrics = generalize(model, opt, samples, stepper, cfg, np.random.default_rng(0))
    np.testing.assert_allclose(metrics["generalize/loss"], float(band_loss(r[failing], t.E_lower, t.E_upper).mean()),
                               rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float32"])
def test_float32_model_with_float64_physics(dtype):
    cfg, stepper, model, opt = make({"model": {"dtype": dtype}})
    model = model.to(torch.float32)
    opt = make_optimizer(model, cfg)
    orbit = Orbit(cfg, 0, np.random.default_rng(0))
    samples, metrics = collect(model, opt, orbit, stepper, cfg)
    assert metrics["collect/accepted"] == 10
    assert samples.x.dtype == np.float64
    assert evaluate(model, stepper, samples).dtype == torch.float64
