"""Simulation and evaluation: learned policy vs fixed-dt and adaptive baselines, the driver's report."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402

from aits import (Config, DtModel, Orbit, Samples, Stepper, auto_norm_scales, build_payload,  # noqa: E402
                  collect, feature_dim, generalize, make_optimizer, save_checkpoint)
from aits.physics import kepler_ic  # noqa: E402
from aits.simulate import (adaptive_timescale, compare, compare_many, integrate, integrate_systems,  # noqa: E402
                           learned_policy, simulate_adaptive, simulate_fixed, simulate_learned)
from aits.systems import Systems  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_driver():
    spec = importlib.util.spec_from_file_location("driver_simulate", ROOT / "driver" / "simulate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


simulate = load_driver()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Step-by-step loops on tiny tensors: extra threads only contend (the driver does the same)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ConstantDt(nn.Module):
    """Always the same dt; checks it is fed features of the checkpoint's width."""

    def __init__(self, dt: float, input_dim: int):
        super().__init__()
        self.dt, self.input_dim = dt, input_dim

    def forward(self, feats):
        assert feats.shape == (1, self.input_dim) and torch.isfinite(feats).all()
        return torch.full(feats.shape[:1], self.dt, dtype=feats.dtype)


def small_config(model=None, **features) -> Config:
    f = {"history_len": 2, "feature_type": "delta_mag", "normalize_inputs": "auto", **features}
    return Config.from_dict({"features": f, "model": {"hidden_dims": [8], "init_dt": 0.01, **(model or {})},
                             "train": {"steps_per_epoch": 20, "generalize_steps": 5, "lr": 1e-3,
                                       "max_retrain_steps": 200},
                             "wandb": {"mode": "disabled"}})


def write_checkpoint(path, cfg, model, scales, epoch=1):
    return save_checkpoint(path, build_payload(epoch, model.state_dict(), None, cfg, scales.to_dict()))


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """Two epochs of the library's two-phase algorithm on two orbits, saved as the drivers do."""
    torch.set_num_threads(1)  # module-scoped: set up before the autouse fixture
    cfg = small_config()
    scales = auto_norm_scales(cfg)
    stepper = Stepper(cfg, scales)
    model = DtModel.from_config(cfg, feature_dim("delta_mag", 2)).double()
    opt = make_optimizer(model, cfg)
    orbits = [Orbit(cfg, i, np.random.default_rng(10 + i)) for i in range(2)]
    rng = np.random.default_rng(0)
    for _ in range(2):
        samples = Samples.concat([collect(model, opt, o, stepper, cfg)[0] for o in orbits])
        generalize(model, opt, samples, stepper, cfg, rng)
    path = tmp_path_factory.mktemp("run") / "tiny" / "model" / "model_epoch_0002.pt"
    return write_checkpoint(path, cfg, model, scales, epoch=2)


def run_driver(capsys, *argv):
    rc = simulate.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------- library
@pytest.mark.parametrize("feature_type,history_len", [("basic", 0), ("delta_mag", 2), ("rich", 3)])
def test_constant_model_equals_fixed_dt_step_for_step(feature_type, history_len):
    cfg = small_config(feature_type=feature_type, history_len=history_len)
    stepper = Stepper(cfg, auto_norm_scales(cfg))
    m, x, v, _ = kepler_ic(0.7, 1.0)
    model = ConstantDt(0.01, feature_dim(feature_type, history_len))
    learned = simulate_learned(model, stepper, m, x, v, duration=1.0)
    fixed = simulate_fixed(m, x, v, 1.0, learned.metrics["steps"])
    assert learned.metrics["steps"] == fixed.metrics["steps"] == 100
    assert learned.metrics["status"] == fixed.metrics["status"] == "ok"
    np.testing.assert_allclose(learned.trajectory["t"], fixed.trajectory["t"], atol=1e-12)
    np.testing.assert_allclose(learned.trajectory["dt"], fixed.trajectory["dt"], atol=1e-15)
    np.testing.assert_allclose(learned.trajectory["x"], fixed.trajectory["x"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(learned.trajectory["v"], fixed.trajectory["v"], rtol=0, atol=1e-12)
    assert learned.metrics["max_rel_dE"] == pytest.approx(fixed.metrics["max_rel_dE"], rel=1e-9)


def test_history_is_carried_as_in_training():
    """The policy sees the pre-step states pushed with the dt that led to them (0 at start)."""
    cfg = small_config(history_len=2)
    stepper = Stepper(cfg, auto_norm_scales(cfg))
    seen = []

    def policy(systems, idx):
        (i,) = idx
        seen.append((systems.hist_count[i], systems.hist_dt[i].copy(), systems.dt[i]))
        return 0.01 * (len(seen))

    m, x, v, _ = kepler_ic(0.6, 1.0)
    integrate(m, x, v, 0.06, policy, history_len=2, dtype=stepper.dtype)
    assert [s[0] for s in seen] == [0, 1, 2]
    assert [s[2] for s in seen] == pytest.approx([0.0, 0.01, 0.02])
    np.testing.assert_allclose(seen[2][1], [0.0, 0.01])  # oldest first: initial state (dt 0), then step 1


def test_last_step_is_clipped_onto_end_time():
    m, x, v, _ = kepler_ic(0.5, 1.0)
    run = integrate(m, x, v, 0.105, lambda s, idx: 0.01)
    assert run.metrics["steps"] == 11
    assert run.trajectory["t"][-1] == pytest.approx(0.105, abs=1e-14)
    assert run.trajectory["dt"][-1] == pytest.approx(0.005, abs=1e-14)


@pytest.mark.parametrize("dt,status", [(float("nan"), "bad_dt"), (-0.1, "bad_dt"), (1e-9, "max_steps")])
def test_bad_policies_stop_with_a_status(dt, status):
    m, x, v, _ = kepler_ic(0.5, 1.0)
    run = integrate(m, x, v, 1.0, lambda s, idx: dt, max_steps=50)
    assert run.metrics["status"] == status and not run.metrics["completed"]


@pytest.mark.parametrize("target", [150, 600])
def test_adaptive_matches_step_count_and_shrinks_dt_at_pericentre(target):
    m, x, v, period = kepler_ic(0.9, 1.0)
    run = simulate_adaptive(m, x, v, period, target)
    assert abs(run.metrics["steps"] - target) <= 0.02 * target and run.metrics["steps_matched"]
    dt = run.trajectory["dt"][1:-1]
    # Starts at pericentre, apocentre half a period later: r ratio (1+e)/(1-e) = 19, dt ~ r^{3/2}.
    assert dt.max() / dt.min() > 0.5 * 19 ** 1.5


def test_adaptive_beats_fixed_on_eccentric_orbit():
    m, x, v, period = kepler_ic(0.9, 1.0)
    ad = simulate_adaptive(m, x, v, period, 300)
    fx = simulate_fixed(m, x, v, period, ad.metrics["steps"])
    assert ad.metrics["max_rel_dE"] < 0.1 * fx.metrics["max_rel_dE"]


# ---------------------------------------------------------------- batches
def kepler_batch(orbits=((0.9, 1.0), (0.5, 1.3), (0.2, 0.7))):
    """m (B,2), x, v (B,2,2) and periods (B,) of Kepler orbits (e, a)."""
    ics = [kepler_ic(e, a) for e, a in orbits]
    return tuple(np.stack([ic[k] for ic in ics]) for k in range(4))


def eta_rule(eta):
    return lambda s, idx: eta * adaptive_timescale(s, idx)


def assert_same_run(batched, alone, rel=1e-12, dE_abs=0.0):
    """Same status and steps; max |dE/E|, final x and every dt equal to ``rel`` (max |dE/E| also to ``dE_abs``)."""
    assert batched.metrics["status"] == alone.metrics["status"]
    assert batched.metrics["steps"] == alone.metrics["steps"]
    assert batched.metrics["max_rel_dE"] == pytest.approx(alone.metrics["max_rel_dE"], rel=rel, abs=dE_abs)
    scale = np.abs(alone.trajectory["x"]).max()
    np.testing.assert_allclose(batched.trajectory["x"][-1], alone.trajectory["x"][-1], rtol=0, atol=rel * scale)
    dt, dt_alone = batched.trajectory["dt"], alone.trajectory["dt"]
    np.testing.assert_allclose(dt[:-1], dt_alone[:-1], rtol=rel, atol=0)
    # The last step is clipped: end time minus the clock, whose round-off is relative to the end time.
    assert dt[-1] == pytest.approx(dt_alone[-1], rel=rel, abs=rel * batched.metrics["end_time"])


@pytest.mark.parametrize("n_steps,history_len", [(1, 0), (3, 2)])
def test_batch_of_kepler_orbits_equals_each_alone(n_steps, history_len):
    m, x, v, periods = kepler_batch()
    kw = {"n_steps": n_steps, "history_len": history_len}
    runs = integrate(m, x, v, 0.5 * periods, eta_rule(0.02), **kw)
    assert len(runs) == 3 and len({r.metrics["steps"] for r in runs}) == 3  # each stops on its own
    for i, run in enumerate(runs):
        alone = integrate(m[i], x[i], v[i], 0.5 * periods[i], eta_rule(0.02), **kw)
        assert run.metrics["status"] == "ok" and run.metrics["steps"] > 30
        assert_same_run(run, alone)


def test_batched_baselines_equal_each_alone():
    m, x, v, periods = kepler_batch()
    fixed = simulate_fixed(m, x, v, periods, [120, 80, 60])
    adaptive = simulate_adaptive(m, x, v, periods, [120, 80, 60])
    for i, steps in enumerate((120, 80, 60)):
        assert_same_run(fixed[i], simulate_fixed(m[i], x[i], v[i], periods[i], steps))
        alone = simulate_adaptive(m[i], x[i], v[i], periods[i], steps)
        assert adaptive[i].metrics["eta"] == alone.metrics["eta"] and adaptive[i].metrics["steps_matched"]
        assert_same_run(adaptive[i], alone)


def test_each_system_ends_on_its_own_end_time():
    m, x, v, _ = kepler_batch()
    durations = np.array([0.105, 0.2337, 0.05])
    runs = integrate(m, x, v, durations, lambda s, idx: np.full(len(idx), 0.01), n_steps=2)
    for run, duration in zip(runs, durations):
        assert run.metrics["status"] == "ok" and run.metrics["duration"] == duration
        assert run.metrics["end_time"] == pytest.approx(duration, abs=1e-14)
        assert run.trajectory["t"][-1] == run.metrics["end_time"]
        assert run.metrics["steps"] == math.ceil(duration / 0.02 - 1e-9)
        np.testing.assert_allclose(np.diff(run.trajectory["t"]), 2 * run.trajectory["dt"][1:], rtol=1e-12)


def test_systems_step_from_their_clock_and_keep_their_history():
    """integrate_systems on a Systems batch: each runs ``duration`` from its own clock; history as in training."""
    m, x, v, _ = kepler_batch()
    systems = Systems.from_arrays(m, x, v, history_len=2)
    integrate_systems(systems, [0.03, 0.05, 0.01], lambda s, idx: 0.01, record=False)
    np.testing.assert_allclose(systems.t, [0.03, 0.05, 0.01], atol=1e-15)
    assert list(systems.steps) == [3, 5, 1] and list(systems.hist_count) == [2, 2, 1]
    np.testing.assert_allclose(systems.hist_dt, [[0.01, 0.01], [0.01, 0.01], [0.0, 0.0]], atol=1e-15)
    runs = integrate_systems(systems, 0.02, lambda s, idx: 0.01)
    np.testing.assert_allclose(systems.t, [0.05, 0.07, 0.03], atol=1e-15)
    assert [r.metrics["steps"] for r in runs] == [2, 2, 2] and runs[0].trajectory["t"][0] == pytest.approx(0.03)


def test_arrays_built_systems_cannot_restart():
    m, x, v, _ = kepler_batch()
    systems = Systems.from_arrays(m, x, v, history_len=1, ids=[7, 8, 9])
    assert len(systems) == 3 and list(systems.ids) == [7, 8, 9] and systems.K == 1
    with pytest.raises(ValueError, match="built from arrays"):
        systems.restart([0])
    with pytest.raises(ValueError, match="built from arrays"):
        systems.advance([0], x[:1], v[:1], np.array([0.01]))
    systems.push([1], x[1:2] * 1.01, v[1:2], np.array([0.01]), 2)
    st = systems.state_dict()
    again = Systems.from_arrays(m, x, v, history_len=1)
    again.load_state_dict(st)
    assert again.t[1] == pytest.approx(0.02) and again.hist_count[1] == 1 and again.steps[0] == 0
    np.testing.assert_array_equal(again.hist_x[1, 0], x[1])


class CountingModel(nn.Module):
    """Wraps a model and records the batch size of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, feats):
        self.calls.append(len(feats))
        return self.model(feats)


def state_dependent_model(cfg, stepper):
    """An untrained DtModel whose output varies with the state (the init's last layer made 100x larger)."""
    f = cfg.features
    model = DtModel.from_config(cfg, feature_dim(f.feature_type, f.history_len)).to(stepper.model_dtype)
    with torch.no_grad():
        model.net[-1].weight.mul_(100.0)
    return model


@pytest.mark.parametrize("features,model_cfg", [
    ({"feature_type": "delta_mag", "history_len": 2}, {}),
    ({"feature_type": "rich", "history_len": 1}, {}),
    ({"feature_type": "scale_free", "history_len": 0},
     {"output": "factor", "symmetric_iterations": 2, "init_factor": 0.05}),
    ({"feature_type": "scale_free", "history_len": 0},
     {"output": "factor", "recursive": True, "init_factor": 0.05}),
])
def test_learned_batch_gives_the_dts_of_one_at_a_time(features, model_cfg):
    cfg = small_config(model_cfg, **features)
    stepper = Stepper(cfg, auto_norm_scales(cfg))
    model = CountingModel(state_dependent_model(cfg, stepper))
    m, x, v, periods = kepler_batch()
    durations = 0.3 * periods
    runs = simulate_learned(model, stepper, m, x, v, durations, max_steps=5000)
    iterations = max(r.metrics["steps"] for r in runs)
    # One model call per loop iteration (and per symmetric iteration) for all active systems.
    assert len(model.calls) == iterations * (1 + stepper.symmetric) and model.calls[0] == 3
    for i, run in enumerate(runs):
        alone = simulate_learned(model, stepper, m[i], x[i], v[i], durations[i], max_steps=5000)
        assert run.metrics["status"] == "ok" and len(np.unique(run.trajectory["dt"][1:-1])) > 5
        # The batched matmuls round differently in the last bit of a few dts: E then differs at
        # round-off (1e-16 of E0), which |dE/E| ~ 1e-4 sees at ~1e-12 relative: compared absolutely.
        assert_same_run(run, alone, dE_abs=1e-14)


def test_recursive_mode_simulates_the_scoreboard_recursion():
    """driver/simulate's batched torch loop and the scoreboard's numpy loop take the same recursive
    steps dt_n = h(z_n)^2 / dt_{n-1} (first step h) with the same model."""
    from aits import integrators as I
    from aits.policy import FactorStep, NumpyMLP

    cfg = small_config({"output": "factor", "recursive": True, "init_factor": 0.05, "init_dt": None},
                       feature_type="scale_free", history_len=0, normalize_inputs="none")
    stepper = Stepper(cfg, auto_norm_scales(cfg))
    model = state_dependent_model(cfg, stepper)
    m, x, v, period = kepler_ic(0.8, 1.0)
    run = simulate_learned(model, stepper, m, x, v, 0.7 * period, max_steps=5000)
    ref = I.integrate(I.RecursivePolicy(FactorStep(NumpyMLP(model, cfg.model.activation), 0.0)), m, x, v,
                      0.7 * period)
    assert run.metrics["status"] == ref.metrics["status"] == "ok"
    assert run.metrics["steps"] == ref.metrics["steps"] > 20
    np.testing.assert_allclose(run.trajectory["dt"], ref.trajectory["dt"], rtol=1e-9)


def test_learned_policy_on_a_subset_equals_each_alone():
    cfg = small_config(history_len=2)
    stepper = Stepper(cfg, auto_norm_scales(cfg))
    model = state_dependent_model(cfg, stepper)
    m, x, v, _ = kepler_batch()
    systems = Systems.from_arrays(m, x, v, history_len=2)
    integrate_systems(systems, [0.05, 0.1, 0.2], lambda s, idx: 0.01, record=False)  # different histories
    policy = learned_policy(model, stepper)
    both = policy(systems, np.array([0, 2]))  # systems.acc: a(x) as the loop left it
    for k, i in enumerate((0, 2)):
        one = Systems.from_arrays(m[i:i + 1], x[i:i + 1], v[i:i + 1], history_len=2)
        one.load_state_dict({**{key: val[i:i + 1] for key, val in systems.state_dict().items() if key != "rng"},
                             "rng": [None]})
        one.acc = systems.acc[i:i + 1]
        assert both[k] == pytest.approx(policy(one, np.array([0]))[0], rel=1e-12)


def test_stopped_systems_leave_the_others_running():
    """A non-finite state and a bad dt stop their systems with that status; the rest finish ok, unchanged."""
    m, x, v, _ = kepler_batch()
    v = v.copy()
    v[1, 0, 0] = np.nan  # non-finite after its first step

    def policy(systems, idx):
        dt = np.full(len(idx), 0.01)
        dt[(idx == 2) & (systems.steps[idx] == 3)] = np.nan  # bad dt at system 2's fourth decision
        return dt

    runs = integrate(m, x, v, 0.1, policy)
    assert [r.metrics["status"] for r in runs] == ["ok", "nonfinite", "bad_dt"]
    assert [r.metrics["steps"] for r in runs] == [10, 0, 3]
    assert [r.metrics["completed"] for r in runs] == [True, False, False]
    assert runs[2].metrics["end_time"] == pytest.approx(0.03) and len(runs[2].trajectory["t"]) == 4
    assert_same_run(runs[0], integrate(m[0], x[0], v[0], 0.1, lambda s, idx: 0.01), rel=0)


def test_compare_many_equals_compare():
    cfg = small_config(history_len=2)
    stepper = Stepper(cfg, auto_norm_scales(cfg))
    model = state_dependent_model(cfg, stepper)
    m, x, v, periods = kepler_batch(((0.9, 1.0), (0.4, 1.0)))
    many = compare_many(model, stepper, m, x, v, 0.1 * periods, reference=False)
    for i, (runs, ref) in enumerate(many):
        alone, _ = compare(model, stepper, m[i], x[i], v[i], 0.1 * periods[i], reference=False)
        assert ref is None and list(runs) == ["learned", "fixed", "adaptive"]
        for method in runs:
            assert_same_run(runs[method], alone[method], dE_abs=1e-14)


# ---------------------------------------------------------------- driver
def own_energy(m, x, v):
    """E = KE + PE in numpy, for (S,N,D) trajectories, G = 1, no softening."""
    ke = 0.5 * (m * (v ** 2).sum(-1)).sum(-1)
    pe = np.zeros(len(x))
    for i in range(len(m)):
        for j in range(i + 1, len(m)):
            pe -= m[i] * m[j] / np.linalg.norm(x[:, i] - x[:, j], axis=-1)
    return ke + pe


def test_report_agrees_with_saved_trajectories_and_plots(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "sim"
    rc, stdout, err = run_driver(capsys, "--checkpoint", trained_checkpoint, "--out", out,
                                 "--orbit", "0.9,1", "0.6,1.1", "--duration", 0.05)
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    assert list(report["systems"]) == ["kepler_e0.9_a1", "kepler_e0.6_a1.1"]
    assert report["history_len"] == 2 and report["feature_type"] == "delta_mag"
    for name, sysr in report["systems"].items():
        assert name in stdout
        traj = np.load(out / sysr["trajectories"])
        m = traj["m"]
        steps = sysr["methods"]["learned"]["steps"]
        assert steps > 10
        assert sysr["methods"]["fixed"]["steps"] == steps
        assert abs(sysr["methods"]["adaptive"]["steps"] - steps) <= 0.02 * steps
        x_ref = traj["reference_x"][-1]
        for method in ("learned", "fixed", "adaptive"):
            r = sysr["methods"][method]
            x, v, t = traj[f"{method}_x"], traj[f"{method}_v"], traj[f"{method}_t"]
            assert x.shape == (r["steps"] + 1, 2, 2) and t[-1] == pytest.approx(0.05, abs=1e-12)
            np.testing.assert_allclose(np.diff(t), traj[f"{method}_dt"][1:], rtol=1e-9)
            e = own_energy(m, x, v)
            np.testing.assert_allclose(traj[f"{method}_E"], e, rtol=1e-12)
            rel = np.abs((e - e[0]) / e[0])
            assert r["final_rel_dE"] == pytest.approx(rel[-1], rel=1e-6)
            assert r["max_rel_dE"] == pytest.approx(rel.max(), rel=1e-6)
            p = (m[None, :, None] * v).sum(1)
            assert r["max_momentum_residual"] == pytest.approx(np.linalg.norm(p - p[0], axis=-1).max(), abs=1e-15)
            ang = (m * (x[..., 0] * v[..., 1] - x[..., 1] * v[..., 0])).sum(-1)
            assert r["max_ang_mom_residual"] == pytest.approx(np.abs(ang - ang[0]).max() / abs(ang[0]),
                                                              rel=1e-6, abs=1e-15)
            err_pos = np.linalg.norm(x[-1] - x_ref, axis=-1).max()
            assert r["final_position_error"] == pytest.approx(err_pos, rel=1e-9)
        png = out / sysr["plot"]
        assert png.read_bytes()[:8] == PNG_MAGIC
        img = matplotlib.image.imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        ratio = sysr["ratios"]["learned_over_fixed_max_rel_dE"]
        assert ratio == pytest.approx(sysr["methods"]["learned"]["max_rel_dE"] / sysr["methods"]["fixed"]["max_rel_dE"])


def test_constant_dt_checkpoint_matches_fixed_through_driver(tmp_path, capsys):
    """A DtModel whose output is a constant (zero last layer) reproduces fixed-dt leapfrog."""
    cfg = small_config(history_len=3, feature_type="rich")
    model = DtModel.from_config(cfg, feature_dim("rich", 3)).double()
    with torch.no_grad():
        model.net[-1].weight.zero_()
        model.net[-1].bias.fill_(math.log(math.expm1(0.002)))
        dt = float(model(torch.zeros(1, feature_dim("rich", 3), dtype=torch.float64))[0])
    ckpt = write_checkpoint(tmp_path / "const.pt", cfg, model, auto_norm_scales(cfg))
    rc, _, err = run_driver(capsys, "--checkpoint", ckpt, "--out", tmp_path / "o", "--orbit", "0.8,1",
                            "--duration", repr(60 * dt), "--no-reference")
    assert rc == 0, err
    traj = np.load(tmp_path / "o" / "kepler_e0.8_a1_trajectories.npz")
    assert len(traj["learned_t"]) == len(traj["fixed_t"]) == 61
    np.testing.assert_allclose(traj["learned_x"], traj["fixed_x"], rtol=0, atol=1e-12)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["systems"]["kepler_e0.8_a1"]["methods"]["learned"]["final_position_error"] is None


def _three_body_file(path, dim=2):
    rng = np.random.default_rng(1)
    rows = np.hstack([np.ones((3, 1)), rng.normal(size=(3, dim)), 0.3 * rng.normal(size=(3, dim))])
    np.savetxt(path, rows)
    return path


@pytest.mark.parametrize("case", ["missing", "corrupt", "eccentricity", "not_numbers", "one_number",
                                  "file_n_mismatch", "file_dim_mismatch", "random_n_mismatch", "bad_set",
                                  "changed_inputs", "bad_periods"])
def test_bad_input_gives_one_line_and_nonzero_exit(case, trained_checkpoint, tmp_path, capsys):
    ck = str(trained_checkpoint)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    two_bodies_3d = np.hstack([np.ones((2, 1)), np.eye(2, 3), np.zeros((2, 3))])
    np.savetxt(tmp_path / "two3d.txt", two_bodies_3d)
    argv = {
        "missing": ["--checkpoint", tmp_path / "nope.pt"],
        "corrupt": ["--checkpoint", corrupt],
        "eccentricity": ["--checkpoint", ck, "--orbit", "1.2,1"],
        "not_numbers": ["--checkpoint", ck, "--orbit", "abc"],
        "one_number": ["--checkpoint", ck, "--orbit", "0.5"],
        "file_n_mismatch": ["--checkpoint", ck, "--ic", _three_body_file(tmp_path / "three.txt")],
        "file_dim_mismatch": ["--checkpoint", ck, "--ic", tmp_path / "two3d.txt"],
        "random_n_mismatch": ["--checkpoint", ck, "--random", "4"],
        "bad_set": ["--checkpoint", ck, "--set", "features.nosuchkey=1"],
        "changed_inputs": ["--checkpoint", ck, "--set", "features.history_len=5"],
        "bad_periods": ["--checkpoint", ck, "--periods", "0"],
    }[case]
    out = tmp_path / "out"
    rc, stdout, err = run_driver(capsys, *argv, "--out", out)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simulate: error:"), err
    assert stdout == ""
    assert not out.exists()  # nothing half-written


def test_trained_checkpoint_simulates_end_to_end_with_defaults(trained_checkpoint, capsys):
    rc, stdout, err = run_driver(capsys, "--checkpoint", trained_checkpoint, "--periods", 0.01)
    assert rc == 0, err
    out = trained_checkpoint.parent.parent / "simulate" / "model_epoch_0002"  # default next to the run
    report = json.loads((out / "report.json").read_text())
    assert report["epoch"] == 2 and report["norm_scales_source"] == "checkpoint"
    assert list(report["systems"]) == ["kepler_e0.5_a1", "kepler_e0.7_a1", "kepler_e0.9_a1"]
    for sysr in report["systems"].values():
        assert sysr["duration"] == pytest.approx(0.01 * 2 * math.pi * math.sqrt(1 / 2))
        for method in ("learned", "fixed", "adaptive"):
            r = sysr["methods"][method]
            assert r["status"] == "ok" and r["max_rel_dE"] < 1e-2 and r["final_position_error"] < 1e-2
        assert (out / sysr["plot"]).is_file() and (out / sysr["trajectories"]).is_file()
    assert "learned/fixed" in stdout


def test_random_and_file_systems(trained_checkpoint, tmp_path, capsys):
    ic = tmp_path / "pair.txt"
    m, x, v, _ = kepler_ic(0.3, 1.0)
    np.savetxt(ic, np.hstack([m[:, None], x, v]))
    rc, _, err = run_driver(capsys, "--checkpoint", trained_checkpoint, "--out", tmp_path / "o", "--ic", ic,
                            "--random", 2, "--duration", 0.02, "--no-reference")
    assert rc == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert list(report["systems"]) == ["file_pair", "random_N2_seed1"]
    assert all(s["methods"]["learned"]["status"] == "ok" for s in report["systems"].values())


@pytest.mark.skipif(not (ROOT / "driver" / "train.py").is_file(), reason="driver/train.py not present")
def test_checkpoint_from_train_driver(tmp_path, capsys):
    sets = ["run.output_dir=" + str(tmp_path), "run.name=t", "train.epochs=2", "train.steps_per_epoch=10",
            "train.generalize_steps=3", "model.hidden_dims=[8]", "ray.inprocess=true", "ray.num_collectors=1",
            "wandb.mode=disabled"]
    cmd = [sys.executable, str(ROOT / "driver" / "train.py"), "--config", str(ROOT / "configs" / "ray.yaml")]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpts = sorted((tmp_path / "t" / "model").glob("model_epoch_*.pt"))
    assert ckpts
    rc, _, err = run_driver(capsys, "--checkpoint", ckpts[-1], "--out", tmp_path / "sim", "--orbit", "0.9,1",
                            "--duration", 0.02)
    assert rc == 0, err
    report = json.loads((tmp_path / "sim" / "report.json").read_text())
    assert report["systems"]["kepler_e0.9_a1"]["methods"]["learned"]["status"] == "ok"
