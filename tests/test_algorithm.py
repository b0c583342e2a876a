"""The two-phase algorithm: retrain loop, collection with warm-up, batched generalisation."""
import math

import numpy as np
import pytest
import torch

from aits import (Config, DtModel, HistoryBuffer, Orbit, Samples, Stepper, auto_norm_scales, band_loss,
                  collect_trajectory, evaluate, feature_dim, generalize_on_trajectory, make_optimizer, optimizer_step,
                  retrain_until_accepted)
from aits.collect import retrain_slot
from aits.physics import kepler_ic, random_ic
from aits.samples import StateBatch
from aits.systems import Systems


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
    prep = stepper.prepare(orbit.batch())
    first = stepper.attempt(model, prep)
    assert float(first.rel_dE.detach()[0]) > cfg.train.energy_threshold  # starts rejected
    slot, accepted, retrains, stuck = retrain_until_accepted(model, opt, stepper, prep, cfg)
    assert accepted and not stuck and retrains > 0 and slot.retrain_steps == retrains
    assert slot.rel_dE[0] < cfg.train.energy_threshold
    # One optimiser step per retrain, none after acceptance.
    steps = [int(s["step"]) for s in opt.state_dict()["state"].values()]
    assert steps and all(s == retrains for s in steps)
    # The dt that passes is smaller than the one that failed.
    assert slot.dt[0] < float(first.dt.detach()[0])


def test_retrain_limit_is_reported_not_raised():
    cfg, stepper, model, opt = make({"system": {"e_min": 0.9, "e_max": 0.9},
                                     "train": {"max_retrain_steps": 2, "lr": 1e-7, "steps_per_epoch": 3}},
                                    init_dt=0.3)
    orbit = Orbit(cfg, 0, np.random.default_rng(0))
    x0 = orbit.x.copy()
    samples, metrics = collect_trajectory(model, opt, orbit, stepper, cfg)
    assert metrics["part1/retrain_limit_hits"] == 3
    assert metrics["part1/accepted"] == 0 and len(samples) == 0
    np.testing.assert_array_equal(orbit.x, x0)  # a lost slot does not move the orbit


def test_collect_discards_warmup_and_ships_own_history():
    cfg, stepper, model, opt = make({"features": {"history_len": 3}, "train": {"steps_per_epoch": 10}})
    orbit = Orbit(cfg, 7, np.random.default_rng(1))
    s1, m1 = collect_trajectory(model, opt, orbit, stepper, cfg)
    assert m1["part1/accepted"] == 10 and m1["part1/warmup_discarded"] == 3 and len(s1) == 7
    assert s1.hist_x.shape == (7, 3, 2, 2) and s1.hist_dt.shape == (7, 3)
    assert np.all(s1.rel_dE < cfg.train.energy_threshold) and np.all(s1.orbit_id == 7)
    np.testing.assert_array_equal(s1.step, np.arange(3, 10))
    # Sample k+1's newest history state is sample k's state, with the dt that led to it.
    np.testing.assert_array_equal(s1.hist_x[1:, -1], s1.x[:-1])
    np.testing.assert_array_equal(s1.hist_dt[1:, -1], s1.dt[:-1])
    np.testing.assert_allclose(s1.dt[1:], s1.accepted_dt[:-1])
    s2, m2 = collect_trajectory(model, opt, orbit, stepper, cfg)  # the orbit continues: no warm-up
    assert len(s2) == 10 and m2["part1/warmup_discarded"] == 0
    np.testing.assert_array_equal(s2.step, np.arange(10, 20))


def test_orbit_restarts_after_periods_and_on_nonfinite():
    cfg, stepper, model, opt = make({"system": {"periods_per_orbit": 0.01}, "train": {"steps_per_epoch": 30}},
                                    init_dt=0.003)
    orbit = Orbit(cfg, 0, np.random.default_rng(2))
    _, metrics = collect_trajectory(model, opt, orbit, stepper, cfg)
    assert metrics["part1/orbit_restarts"] >= 1 and orbit.restarts[0] == metrics["part1/orbit_restarts"]
    assert orbit.t[0] < 0.01 * orbit.period[0] + 0.1
    restarted = orbit.advance([0], np.full_like(orbit.x, np.nan), orbit.v, np.array([0.01]))
    assert list(restarted) == [0] and np.isfinite(orbit.x).all() and orbit.steps[0] == 0
    assert orbit.hist_count[0] == 0 and not orbit.hist_x.any()


def test_orbit_state_round_trip():
    cfg, *_ = make()
    a = Systems(cfg, [0, 1, 2], [np.random.default_rng(3 + i) for i in range(3)])
    a.advance([1], a.x[1:2] * 1.001, a.v[1:2], np.array([0.01]))
    b = Systems(cfg, [5, 6, 7], [np.random.default_rng(99 + i) for i in range(3)])
    b.load_state_dict(a.state_dict())
    for s in (a, b):
        s.restart([0, 2])
    for name, value in a.state_dict().items():
        if name != "rng":
            np.testing.assert_array_equal(getattr(b, name), value, err_msg=name)  # same RNG state -> same orbits
    assert b.steps[1] == 1 and b.hist_count[1] == 1
    with pytest.raises(ValueError):
        Systems(cfg, [0], [np.random.default_rng(0)]).load_state_dict(a.state_dict())


def _samples(cfg, stepper, model, opt, n_orbits=3):
    parts = []
    for i in range(n_orbits):
        orbit = Orbit(cfg, i, np.random.default_rng(10 + i))
        parts.append(collect_trajectory(model, opt, orbit, stepper, cfg)[0])
    return Samples.concat(parts)


def test_batched_evaluation_equals_one_by_one():
    cfg, stepper, model, opt = make({"train": {"steps_per_epoch": 12}})
    samples = _samples(cfg, stepper, model, opt)
    with torch.no_grad():
        batched = stepper.attempt(model, stepper.prepare(samples))
        single = [stepper.attempt(model, stepper.prepare(samples.take([i]))) for i in range(len(samples))]
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
    metrics = generalize_on_trajectory(model, opt, samples, stepper, cfg, np.random.default_rng(0))
    after = evaluate(model, stepper, samples)
    loss_after = band_loss(after[failing], cfg.train.E_lower, cfg.train.E_upper).mean()
    assert metrics["part2/iterations"] > 0 and metrics["part2/pass_rate_first"] < 1.0
    assert float(loss_after) < 0.5 * float(loss_before)
    assert float((after >= cfg.train.energy_threshold).double().mean()) < float(failing.double().mean())


def test_generalize_skips_small_sets_and_uses_minibatches():
    cfg, stepper, model, opt = make({"train": {"generalize_min_samples": 100, "steps_per_epoch": 12}})
    samples = _samples(cfg, stepper, model, opt, 1)
    m = generalize_on_trajectory(model, opt, samples, stepper, cfg, np.random.default_rng(0))
    assert m["part2/skipped"] == 1.0 and m["part2/converged"] == 1.0 and m["part2/iterations"] == 0


def test_band_on_accept_pushes_small_steps_up_in_collection():
    dts = {}
    for flag in (False, True):
        cfg, stepper, model, opt = make({"train": {"steps_per_epoch": 40, "band_on_accept": flag, "E_lower": 1e-5,
                                                   "lr": 1e-2}},
                                        init_dt=0.0005)
        samples, metrics = collect_trajectory(model, opt, Orbit(cfg, 0, np.random.default_rng(0)), stepper, cfg)
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
    metrics = generalize_on_trajectory(model, opt, samples, stepper, cfg, np.random.default_rng(0))
    assert metrics["part2/iterations"] == 1
    np.testing.assert_allclose(metrics["part2/loss"], float(expected), rtol=1e-10)
    cfg.train.band_on_accept = False
    with torch.no_grad():
        model.net[-1].bias += 0.5
    r = evaluate(model, stepper, samples)
    failing = r >= t.energy_threshold
    metrics = generalize_on_trajectory(model, opt, samples, stepper, cfg, np.random.default_rng(0))
    np.testing.assert_allclose(metrics["part2/loss"], float(band_loss(r[failing], t.E_lower, t.E_upper).mean()),
                               rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float32"])
def test_float32_model_with_float64_physics(dtype):
    cfg, stepper, model, opt = make({"model": {"dtype": dtype}})
    model = model.to(torch.float32)
    opt = make_optimizer(model, cfg)
    orbit = Orbit(cfg, 0, np.random.default_rng(0))
    samples, metrics = collect_trajectory(model, opt, orbit, stepper, cfg)
    assert metrics["part1/accepted"] == 10
    assert samples.x.dtype == np.float64
    assert evaluate(model, stepper, samples).dtype == torch.float64


# ---------------------------------------------------------------- B systems per collector
class RefOrbit:
    """The one-orbit environment as it was before batched systems (reference for B = 1)."""

    def __init__(self, cfg, orbit_id, rng):
        s = cfg.system
        self.cfg, self.orbit_id, self.rng = cfg, orbit_id, rng
        self.history = HistoryBuffer(cfg.features.history_len, s.num_particles, s.dim)
        self.restart()

    def restart(self):
        s, self.period = self.cfg.system, math.inf
        if s.ic == "kepler":
            e, a = self.rng.uniform(s.e_min, s.e_max), self.rng.uniform(s.a_min, s.a_max)
            self.m, self.x, self.v, self.period = kepler_ic(e, a, s.mass, s.dim)
        else:
            self.m, self.x, self.v = random_ic(s.num_particles, s.dim, s.mass, s.pos_scale, s.vel_scale, self.rng)
        self.t, self.dt, self.steps = 0.0, 0.0, 0
        self.history.clear()

    def advance(self, x1, v1, dt):
        self.history.push(self.x, self.v, self.dt)
        self.x, self.v, self.dt = x1, v1, dt
        self.t += dt * self.cfg.system.n_steps
        self.steps += 1
        if not (np.isfinite(x1).all() and np.isfinite(v1).all()) or \
                self.t >= self.cfg.system.periods_per_orbit * self.period:
            self.restart()


def ref_collect(model, optimizer, orbit, stepper, cfg):
    """The seed's collect loop on one orbit, as it was before batched systems: (rows, retrain counts)."""
    t, K, rows, counts = cfg.train, cfg.features.history_len, [], []
    for _ in range(t.steps_per_epoch):
        hx, hv, hdt = orbit.history.arrays()
        batch = StateBatch(orbit.m[None], orbit.x[None], orbit.v[None], np.array([orbit.dt]), hx[None], hv[None],
                           hdt[None])
        prep, retrains = stepper.prepare(batch), 0
        while True:
            att = stepper.attempt(model, prep)
            if bool(att.passed(t.energy_threshold).all()):
                accepted, stuck = True, False
                break
            if not bool(torch.isfinite(att.rel_dE.detach()).all()):
                accepted, stuck = False, True
                break
            if t.max_retrain_steps and retrains >= t.max_retrain_steps:
                accepted, stuck = False, False
                break
            if not optimizer_step(model, optimizer, band_loss(att.rel_dE, t.E_lower, t.E_upper).mean()):
                accepted, stuck = False, True
                break
            retrains += 1
        counts.append(retrains)
        if not accepted:
            if stuck:
                orbit.restart()
            continue
        dt, err = float(att.dt.detach()[0]), float(att.rel_dE.detach()[0])
        if t.band_on_accept and err < t.E_lower:
            optimizer_step(model, optimizer, band_loss(att.rel_dE, t.E_lower, t.E_upper, lower_only=True).mean())
        if orbit.steps >= K:
            rows.append((orbit.x.copy(), orbit.steps, dt, err, retrains, hx))
        orbit.advance(att.x.detach()[0].numpy(), att.v.detach()[0].numpy(), dt)
    return rows, counts


@pytest.mark.parametrize("case", [
    {},
    {"train": {"band_on_accept": True, "E_lower": 1e-5}},
    {"system": {"periods_per_orbit": 0.002}},  # restarts
    {"train": {"max_retrain_steps": 3}, "system": {"e_min": 0.9, "e_max": 0.95}},  # lost slots
    {"system": {"ic": "random", "num_particles": 3}, "features": {"feature_type": "basic"}},
])
def test_one_system_per_collector_is_the_seed_loop_bit_for_bit(case):
    cfg, stepper, model, opt = make({"train": {"steps_per_epoch": 25}, **case}, init_dt=0.02)
    ref_model = DtModel.from_config(cfg, model.input_dim).double()
    ref_model.load_state_dict(model.state_dict())
    ref_opt = make_optimizer(ref_model, cfg)
    systems, orbit = Systems.for_collector(cfg, 4, 1), RefOrbit(cfg, 4, np.random.default_rng(cfg.run.seed + 4))
    for _ in range(3):  # epochs: state carries over
        samples, metrics = collect_trajectory(model, opt, systems, stepper, cfg)
        rows, counts = ref_collect(ref_model, ref_opt, orbit, stepper, cfg)
        assert len(samples) == len(rows) == metrics["part1/samples"]
        if rows:
            np.testing.assert_array_equal(samples.x, np.stack([r[0] for r in rows]))
            np.testing.assert_array_equal(samples.step, [r[1] for r in rows])
            np.testing.assert_array_equal(samples.accepted_dt, [r[2] for r in rows])
            np.testing.assert_array_equal(samples.rel_dE, [r[3] for r in rows])
            np.testing.assert_array_equal(samples.retrains, [r[4] for r in rows])
            np.testing.assert_array_equal(samples.hist_x, np.stack([r[5] for r in rows]))
        assert metrics["part1/max_retrains"] == max(counts)
        assert metrics["part1/retrain_steps"] == sum(counts)  # B = 1: one step per retrain
        np.testing.assert_array_equal(systems.x[0], orbit.x)
        for k, v in model.state_dict().items():
            assert torch.equal(v, ref_model.state_dict()[k]), k
    if "periods_per_orbit" in case.get("system", {}):
        assert systems.restarts[0] > 0
    if "max_retrain_steps" in case.get("train", {}):
        assert metrics["part1/retrain_limit_hits"] > 0


def test_systems_have_independent_streams():
    cfg, *_ = make({"system": {"ic": "random", "num_particles": 3}})
    many = Systems.for_collector(cfg, 1, 4)
    assert list(many.ids) == [4, 5, 6, 7]
    for j in range(4):  # system j of collector 1 (B = 4) is the system with id 4 + j alone
        one = Systems(cfg, [4 + j], [np.random.default_rng(cfg.run.seed + 4 + j)])
        np.testing.assert_array_equal(many.x[j], one.x[0])
    assert len({many.x[j].tobytes() for j in range(4)}) == 4
    # Restarting one system draws from its stream only.
    before = many.state_dict()
    many.restart([2])
    for j in (0, 1, 3):
        np.testing.assert_array_equal(many.x[j], before["x"][j])
        assert many.rngs[j].bit_generator.state == before["rng"][j]
    assert not np.array_equal(many.x[2], before["x"][2]) and many.restarts[2] == 1


def test_collect_on_many_systems_ships_each_systems_own_history():
    cfg, stepper, model, opt = make({"features": {"history_len": 3}, "train": {"steps_per_epoch": 12,
                                                                              "max_retrain_steps": 0}})
    systems = Systems.for_collector(cfg, 0, 5)
    samples, metrics = collect_trajectory(model, opt, systems, stepper, cfg)
    assert metrics["part1/accepted"] == 60 and metrics["part1/samples"] == len(samples) == 45
    assert metrics["part1/systems"] == 5 and metrics["part1/warmup_discarded"] == 15
    for j in range(5):
        s = samples.take(samples.orbit_id == j)
        np.testing.assert_array_equal(s.step, np.arange(3, 12))
        np.testing.assert_array_equal(s.hist_x[1:, -1], s.x[:-1])  # each system's chain is its own
        np.testing.assert_array_equal(s.dt[1:], s.accepted_dt[:-1])
    assert np.all(samples.rel_dE < cfg.train.energy_threshold)
    assert metrics["part1/retrain_steps"] <= metrics["part1/max_retrains"] * 12
    if metrics["part1/retrain_steps"]:
        assert 1 <= metrics["part1/mean_rejected_per_retrain"] <= 5


def test_rejected_subset_retrains_together_on_its_mean_loss():
    cfg, stepper, model, opt = make({"train": {"max_retrain_steps": 1}}, init_dt=0.005)
    systems = Systems.for_collector(cfg, 0, 8)
    prep = stepper.prepare(systems.batch())
    ref = DtModel.from_config(cfg, model.input_dim).double()
    ref.load_state_dict(model.state_dict())
    ref_opt = make_optimizer(ref, cfg)
    att = stepper.attempt(ref, prep)
    passed = att.passed(cfg.train.energy_threshold)
    assert 0 < int(passed.sum()) < 8  # a mixed slot
    t = cfg.train
    optimizer_step(ref, ref_opt, band_loss(att.rel_dE[~passed], t.E_lower, t.E_upper).mean())
    slot = retrain_slot(model, opt, stepper, prep, cfg)
    # One shared step on the rejected subset's mean loss, then that subset alone attempted again.
    assert slot.retrain_steps == 1 and slot.rejected_total == int((~passed).sum()) and slot.attempts == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    first_pass = passed.numpy()
    assert slot.accepted[first_pass].all() and (slot.retrains[first_pass] == 0).all()
    assert (slot.retrains[~first_pass] == 1).all()
    again = stepper.attempt(ref, prep.take(torch.as_tensor(np.nonzero(~first_pass)[0])))
    np.testing.assert_array_equal(slot.accepted[~first_pass], again.passed(t.energy_threshold).numpy())
    assert (slot.lost == (~slot.accepted)).all() and not slot.stuck.any()


def test_epoch_without_usable_attempts_reports_zero_rates():
    cfg, stepper, model, opt = make({"train": {"steps_per_epoch": 4}})
    with torch.no_grad():
        model.net[-1].bias.fill_(float("nan"))  # every attempt non-finite: nothing accepted, nothing retrained
    samples, metrics = collect_trajectory(model, opt, Systems.for_collector(cfg, 0, 3), stepper, cfg)
    assert len(samples) == 0 and metrics["part1/accepted"] == 0 and metrics["part1/nonfinite"] == 12
    assert metrics["part1/acceptance_rate"] == 0.0 and metrics["part1/mean_dt"] == 0.0
    assert metrics["part1/mean_rejected_per_retrain"] == 0.0 and metrics["part1/mean_retrains"] == 0.0
