"""A checkpoint's learned rule in the evaluation loop (aits/policy.py on aits/integrators.py): its one
rule for missing norm scales (aits.checkpoint.norm_scales_of), the policy carried as in training, and
the loop's end-time and stop rules."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from aits import (Config, DtModel, NormScales, Orbit, Samples, Stepper, auto_norm_scales, build_payload,
                  collect_trajectory, feature_dim, generalize_on_trajectory, make_optimizer, predict_dt)
from aits import integrators as I
from aits.checkpoint import CheckpointError, fit_weights, norm_scales_of
from aits.physics import kepler_ic
from aits.policy import learned_methods
from aits.samples import StateBatch
from aits.systems import Systems

from helpers import factor_cfg, perturbed_model


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Step-by-step loops on tiny tensors: extra threads only contend (the evaluation does the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def seed_config(**features) -> Config:
    """A small seed-mode (model.output: dt) Kepler config with history features."""
    f = {"history_len": 2, "feature_type": "delta_mag", "normalize_inputs": "auto", **features}
    return Config.from_dict({"features": f, "model": {"hidden_dims": [8], "init_dt": 0.01},
                             "train": {"steps_per_epoch": 20, "generalize_steps": 5, "lr": 1e-3,
                                       "max_retrain_steps": 200},
                             "wandb": {"mode": "disabled"}})


def payload(cfg: Config, model, scales: NormScales | None = None) -> dict:
    """A checkpoint dictionary as the training driver writes it (scales: the run's, by default)."""
    return build_payload(1, model.state_dict(), None, cfg, (scales or auto_norm_scales(cfg)).to_dict())


def seed_model(cfg: Config, gain: float = 100.0) -> DtModel:
    """An untrained seed-mode DtModel whose dt varies with the state (its last layer made ``gain`` x larger)."""
    f = cfg.features
    model = DtModel.from_config(cfg, feature_dim(f.feature_type, f.history_len)).double()
    with torch.no_grad():
        model.net[-1].weight.mul_(gain)
    return model


def run(method: I.Method, cfg: Config, m, x, v, duration: float, **kw) -> I.Run:
    return I.integrate(method, m, x, v, duration, eps=cfg.system.softening, n_steps=cfg.system.n_steps, **kw)


# ---------------------------------------------------------------- norm scales: one rule
def test_missing_norm_scales_are_recomputed_as_training_does():
    """An `auto` seed-mode checkpoint without its norm scales steps exactly as with them; unit scales would not."""
    cfg = seed_config()
    ckpt = payload(cfg, seed_model(cfg))
    stripped = {k: v for k, v in ckpt.items() if k != "norm_scales"}
    assert norm_scales_of(stripped) == norm_scales_of(ckpt) == auto_norm_scales(cfg)
    assert norm_scales_of({**ckpt, "norm_scales": None}) == auto_norm_scales(cfg)
    assert auto_norm_scales(cfg) != NormScales()  # else the test could not tell the rules apart
    m, x, v, period = kepler_ic(0.7, 1.0)
    with_scales = run(learned_methods(ckpt)["learned"], cfg, m, x, v, 0.2 * period)
    without = run(learned_methods(stripped)["learned"], cfg, m, x, v, 0.2 * period)
    assert with_scales.metrics["status"] == "ok" and with_scales.metrics["steps"] > 20
    np.testing.assert_array_equal(without.trajectory["dt"], with_scales.trajectory["dt"])
    unit = run(learned_methods({**ckpt, "norm_scales": NormScales().to_dict()})["learned"], cfg, m, x, v,
               0.2 * period)
    n = min(len(unit.trajectory["dt"]), len(with_scales.trajectory["dt"])) - 1
    assert np.abs(unit.trajectory["dt"][1:n] / with_scales.trajectory["dt"][1:n] - 1).max() > 1e-3


def test_norm_scales_of_other_normalisations():
    """`none` gets unit scales, `manual` the config's; stored scales win; bad stored scales are one clear error."""
    none = seed_config(normalize_inputs="none")
    assert norm_scales_of({"config": none.to_dict()}) == NormScales()
    manual = seed_config(normalize_inputs="manual", L0=2.0, V0=3.0, A0=5.0, T0=7.0)
    assert norm_scales_of({"config": manual.to_dict()}, manual) == NormScales(2.0, 3.0, 5.0, 7.0)
    stored = {"L0": 1.5, "V0": 0.5, "A0": 4.0, "T0": 3.0}
    assert norm_scales_of({"config": none.to_dict(), "norm_scales": stored}) == NormScales(**stored)
    for bad in ({"L0": 1.0}, {**stored, "V0": "fast"}, {**stored, "A0": float("nan")}, {**stored, "T0": 0.0}):
        with pytest.raises(CheckpointError, match="model_epoch_0001.pt: norm_scales must hold"):
            norm_scales_of({"config": none.to_dict(), "norm_scales": bad}, path="model_epoch_0001.pt")


def test_weights_of_another_model_are_one_clear_error():
    """Weights that do not fit the model the checkpoint's config describes: CheckpointError naming the file."""
    cfg = seed_config()
    other = seed_config()
    other.model.hidden_dims = [16, 16]
    ckpt = payload(cfg, seed_model(other))
    model = DtModel.from_config(cfg, feature_dim("delta_mag", 2)).double()
    with pytest.raises(CheckpointError, match=r"^checkpoint run/m\.pt: weights do not fit the model its config "
                                              r"describes \(((Missing|Unexpected) key|size mismatch)"):
        fit_weights(model, ckpt, "run/m.pt")
    good = payload(cfg, seed_model(cfg))
    assert fit_weights(model, good) is model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), good["model_state_dict"].values()))


# ---------------------------------------------------------------- the learned rule as trained
@pytest.mark.parametrize("feature_type,history_len", [("basic", 0), ("delta_mag", 2), ("rich", 3)])
def test_constant_seed_model_equals_fixed_step(feature_type, history_len):
    """A DtModel with a constant output (zero last layer) steps exactly as fixed-dt leapfrog, its
    features (of the checkpoint's width) costing K + 1 evaluations a step."""
    cfg = seed_config(feature_type=feature_type, history_len=history_len)
    model = seed_model(cfg)
    with torch.no_grad():
        model.net[-1].weight.zero_()
        model.net[-1].bias.fill_(math.log(math.expm1(0.01)))
        dt = float(model(torch.zeros(1, feature_dim(feature_type, history_len), dtype=torch.float64))[0])
    m, x, v, _ = kepler_ic(0.7, 1.0)
    learned = run(learned_methods(payload(cfg, model))["learned"], cfg, m, x, v, 100 * dt)
    fixed = run(I.FixedStep(dt), cfg, m, x, v, 100 * dt)
    assert learned.metrics["status"] == fixed.metrics["status"] == "ok"
    assert learned.metrics["steps"] == fixed.metrics["steps"] == 100
    for key in ("t", "dt", "x", "v"):
        np.testing.assert_array_equal(learned.trajectory[key], fixed.trajectory[key])
    assert learned.metrics["force_evals"] == fixed.metrics["force_evals"] + 100 * (history_len + 1)


@pytest.fixture(scope="module")
def trained_checkpoint() -> dict:
    """Two epochs of the library's two-phase algorithm on two orbits, as the training driver stores them."""
    torch.set_num_threads(1)  # module-scoped: set up before the autouse fixture
    cfg = seed_config()
    scales = auto_norm_scales(cfg)
    stepper = Stepper(cfg, scales)
    model = DtModel.from_config(cfg, feature_dim("delta_mag", 2)).double()
    opt = make_optimizer(model, cfg)
    orbits = [Orbit(cfg, i, np.random.default_rng(10 + i)) for i in range(2)]
    rng = np.random.default_rng(0)
    for _ in range(2):
        samples = Samples.concat([collect_trajectory(model, opt, o, stepper, cfg)[0] for o in orbits])
        generalize_on_trajectory(model, opt, samples, stepper, cfg, rng)
    return payload(cfg, model, scales)


def test_trained_seed_model_is_carried_as_in_training(trained_checkpoint):
    """Every dt of the evaluation loop is the one training's code picks for that state with the history
    the collectors carry (``Systems.push``: the pre-step state with the dt that led to it)."""
    cfg = Config.from_dict(trained_checkpoint["config"])
    m, x, v, period = kepler_ic(0.8, 1.0)
    res = run(learned_methods(trained_checkpoint)["learned"], cfg, m, x, v, 0.5 * period)
    assert res.metrics["status"] == "ok" and res.metrics["steps"] > 30 and res.metrics["max_rel_dE"] < 1e-2
    tr = res.trajectory
    assert len(np.unique(tr["dt"][1:-1])) > 5  # a state-dependent rule, not a constant
    model = DtModel.from_config(cfg, feature_dim("delta_mag", 2)).double()
    model.load_state_dict(trained_checkpoint["model_state_dict"])
    model.eval()
    stepper = Stepper(cfg, NormScales(**trained_checkpoint["norm_scales"]))
    systems = Systems.from_arrays(m[None], x[None], v[None], history_len=cfg.features.history_len)
    picked = []
    for k in range(1, len(tr["t"])):
        picked.append(float(predict_dt(model, stepper, systems.batch())[0]))
        systems.push([0], tr["x"][k][None], tr["v"][k][None], np.array([tr["dt"][k]]), cfg.system.n_steps)
    np.testing.assert_allclose(tr["dt"][1:-1], picked[:-1], rtol=1e-12)
    assert tr["dt"][-1] <= picked[-1] * (1 + 1e-12)  # the last step clipped onto the end time
    assert systems.t[0] == pytest.approx(0.5 * period, rel=1e-12)


def test_history_holds_the_pre_step_states_with_the_dt_that_led_to_them(trained_checkpoint):
    """After two steps the K = 2 history holds the start (dt 0) and the state after step 1 (with dt_1), oldest first."""
    cfg = Config.from_dict(trained_checkpoint["config"])
    method = learned_methods(trained_checkpoint)["learned"]
    m, x, v, _ = kepler_ic(0.6, 1.0)
    res = run(method, cfg, m, x, v, 1e9, max_steps=2)
    hx, hv, hdt = method.policy.history.arrays()
    assert method.policy.history.count == 2 and res.metrics["steps"] == 2
    np.testing.assert_array_equal(hdt, [0.0, res.trajectory["dt"][1]])
    np.testing.assert_array_equal(hx, res.trajectory["x"][:2])
    np.testing.assert_array_equal(hv, res.trajectory["v"][:2])
    method.start(I.State(m, x, v, I.accel(x, m)))  # a new run starts with an empty history
    assert method.policy.history.count == 0 and not method.policy.history.dt.any()


@pytest.mark.parametrize("mode,radial", [("explicit", "fraction"), ("recursive", "fraction"), ("recursive", "energy")])
def test_factor_rule_takes_the_training_attempts_dt(mode, radial):
    """The numpy rule of a factor model takes, state by state, the dt of training's differentiable attempt
    (``Stepper.attempt``; the recursion's given the previous step, as in a passage rollout); with either
    ``features.radial_feature``, which the checkpoint's config carries to the numpy rule."""
    cfg = factor_cfg(symmetric_iterations=0, recursive=mode == "recursive")
    cfg = Config.from_dict(cfg.to_dict(), [f"features.radial_feature={radial}"])
    model = perturbed_model(cfg)
    ckpt = payload(cfg, model, NormScales())
    m, x, v, period = kepler_ic(0.8, 1.0)
    res = run(learned_methods(ckpt)["learned"], cfg, m, x, v, 0.7 * period)
    assert res.metrics["status"] == "ok" and res.metrics["steps"] > 20
    tr, stepper = res.trajectory, Stepper(cfg, NormScales())
    n = len(tr["t"]) - 2  # every state but the last two: the last step is clipped
    z = np.zeros((n, 0, 2, 2))
    prep = stepper.prepare(StateBatch(np.tile(m, (n, 1)), tr["x"][:n], tr["v"][:n], tr["dt"][:n], z, z, np.zeros((n, 0))))
    if mode == "recursive":
        prep.dt_prev = torch.as_tensor(tr["dt"][:n])
        prep.dt_prev[0] = 1.0
    with torch.no_grad():
        dt = stepper.attempt(model, prep).dt.numpy()
        if mode == "recursive":  # the first step is h itself: no previous step
            dt[0] = float(stepper.step_size(model, prep.feats[:1], prep.tau[:1])[0])
    np.testing.assert_allclose(tr["dt"][1:n + 1], dt, rtol=1e-11)


# ---------------------------------------------------------------- the loop's rules
def test_last_step_is_clipped_onto_end_time():
    m, x, v, _ = kepler_ic(0.5, 1.0)
    res = I.integrate(I.FixedStep(0.01), m, x, v, 0.105)
    assert res.metrics["steps"] == 11 and res.metrics["status"] == "ok"
    assert res.trajectory["t"][-1] == pytest.approx(0.105, abs=1e-14)
    assert res.trajectory["dt"][-1] == pytest.approx(0.005, abs=1e-14)
    assert res.metrics["end_time"] == res.trajectory["t"][-1]


@pytest.mark.parametrize("dt,status,steps", [(float("nan"), "bad_dt", 0), (-0.1, "bad_dt", 0),
                                             (1e-9, "max_steps", 50), (0.0, "bad_dt", 0)])
def test_bad_policies_stop_with_a_status(dt, status, steps):
    m, x, v, _ = kepler_ic(0.5, 1.0)
    res = I.integrate(I.PolicyStep(lambda s: dt), m, x, v, 1.0, max_steps=50)
    assert res.metrics["status"] == status and res.metrics["steps"] == steps


def test_non_finite_state_stops_with_nonfinite():
    m, x, v, _ = kepler_ic(0.5, 1.0)
    v = v.copy()
    v[0, 0] = np.nan
    res = I.integrate(I.FixedStep(0.01), m, x, v, 1.0)
    assert res.metrics["status"] == "nonfinite" and res.metrics["steps"] == 1


def test_adaptive_shrinks_dt_at_pericentre_and_beats_fixed_at_equal_evaluations():
    m, x, v, period = kepler_ic(0.9, 1.0)
    ad = I.integrate(I.Adaptive(0.02), m, x, v, period)
    dt = ad.trajectory["dt"][1:-1]
    # Starts at pericentre, apocentre half a period later: r ratio (1+e)/(1-e) = 19, dt ~ r^{3/2}.
    assert dt.max() / dt.min() > 0.5 * 19 ** 1.5
    fx = I.integrate(I.FixedStep(period / ad.metrics["steps"]), m, x, v, period)
    assert abs(fx.metrics["force_evals"] - ad.metrics["force_evals"]) <= 2
    assert ad.metrics["max_rel_dE"] < 0.1 * fx.metrics["max_rel_dE"]


def test_arrays_built_systems_cannot_restart():
    """``Systems.from_arrays`` (the history carrier above): pushes like a collector's systems, never restarts."""
    ics = [kepler_ic(e, 1.0) for e in (0.9, 0.5, 0.2)]
    m, x, v = (np.stack([ic[k] for ic in ics]) for k in range(3))
    systems = Systems.from_arrays(m, x, v, history_len=1, ids=[7, 8, 9])
    assert len(systems) == 3 and list(systems.ids) == [7, 8, 9] and systems.K == 1
    with pytest.raises(ValueError, match="built from arrays"):
        systems.restart([0])
    with pytest.raises(ValueError, match="built from arrays"):
        systems.advance([0], x[:1], v[:1], np.array([0.01]))
    systems.push([1], x[1:2] * 1.01, v[1:2], np.array([0.01]), 2)
    again = Systems.from_arrays(m, x, v, history_len=1)
    again.load_state_dict(copy.deepcopy(systems.state_dict()))
    assert again.t[1] == pytest.approx(0.02) and again.hist_count[1] == 1 and again.steps[0] == 0
    np.testing.assert_array_equal(again.hist_x[1, 0], x[1])
