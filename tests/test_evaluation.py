"""The evaluation tool's yardsticks: IAS15's 2024 timescale, the strongest classical family, the
position error against the reference, the practitioner problems, the user's own system and the
failure statuses (aits/scoreboard.py, aits/problems.py, aits/integrators.py, driver/evaluate.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aits import NormScales, build_payload, save_checkpoint
from aits import integrators as I
from aits import problems as P
from aits import scoreboard as S
from aits.physics import kepler_ic
from driver import evaluate

from helpers import factor_cfg, perturbed_model

rebound = pytest.importorskip("rebound")


# ---------------------------------------------------------------- the PRS timescale
@pytest.mark.parametrize("masses,a,dim", [([1.0, 1.0], 1.0, 2), ([1.0, 1e-3], 2.5, 3)])
def test_prs_timescale_of_a_circular_orbit_is_period_over_two_pi(masses, a, dim):
    m, x, v, period = kepler_ic(0.0, a, masses, dim)
    tau = I.prs_timescale(x, v, I.accel(x, m), m)
    assert tau == pytest.approx(period / (2 * math.pi), rel=1e-12)
    # sqrt(r/|a|) of the body that feels the other's mass m_j: sqrt(r^3 / m_j) = tau * sqrt(M / m_j)
    assert I.timescale(x, I.accel(x, m)) == pytest.approx(tau * math.sqrt(sum(masses) / max(masses)), rel=1e-12)


def test_jerk_and_snap_equal_finite_differences_of_a_reference_trajectory():
    """a(t) along an IAS15 trajectory of a softened three-body system: central differences of a give
    the jerk and snap the pair sums compute from one state."""
    m = np.array([1.0, 0.7, 0.4])
    x0 = np.array([[0.0, 0.0, 0.1], [1.0, 0.2, 0.0], [-0.4, 0.9, -0.2]])
    v0 = np.array([[0.0, -0.2, 0.0], [0.1, 0.8, 0.1], [-0.6, -0.1, 0.2]])
    eps, t0, h = 0.05, 0.3, 1e-3
    sim = rebound.Simulation()
    sim.G, sim.softening, sim.integrator = 1.0, eps, "ias15"
    for i in range(3):
        sim.add(m=m[i], x=x0[i, 0], y=x0[i, 1], z=x0[i, 2], vx=v0[i, 0], vy=v0[i, 1], vz=v0[i, 2])
    states = {}
    for k in (-2, -1, 0, 1, 2):
        sim.integrate(t0 + k * h, exact_finish_time=1)
        states[k] = (np.array([[p.x, p.y, p.z] for p in sim.particles]),
                     np.array([[p.vx, p.vy, p.vz] for p in sim.particles]))
    acc = {k: I.accel(xk, m, eps) for k, (xk, _) in states.items()}
    x, v = states[0]
    jerk, snap = I.jerk_snap(x, v, acc[0], m, eps)
    # fourth-order central differences
    jerk_fd = (-acc[2] + 8 * acc[1] - 8 * acc[-1] + acc[-2]) / (12 * h)
    snap_fd = (-acc[2] + 16 * acc[1] - 30 * acc[0] + 16 * acc[-1] - acc[-2]) / (12 * h * h)
    np.testing.assert_allclose(jerk, jerk_fd, rtol=1e-6, atol=1e-8 * np.abs(jerk).max())
    np.testing.assert_allclose(snap, snap_fd, rtol=1e-4, atol=1e-5 * np.abs(snap).max())
    # even under time reversal, as the reversible step forms need
    assert I.prs_timescale(x, -v, acc[0], m, eps) == I.prs_timescale(x, v, acc[0], m, eps)


def test_prs_ignores_a_body_whose_acceleration_vanishes_by_symmetry():
    m, x, v, period = P.figure_eight()
    a = I.accel(x, m)
    assert np.linalg.norm(a[2]) < 1e-12 * np.linalg.norm(a[0])
    tau = I.prs_timescale(x, v, a, m)
    assert 0.05 * period < tau < period  # set by the outer bodies, not 0


# ---------------------------------------------------------------- strongest, trajectory error, statuses
def test_strongest_is_the_classical_family_with_the_smallest_error_and_ratios_follow():
    system = S.kepler_system(0.7, 1.0, 3, "test")
    entry = S.score_system(system, {"learned": I.RecursiveAdaptive(0.05, name="learned")})
    classical = [f for f in S.families_for(system) if f in S.CLASSICAL]
    errs = {f: entry["methods"][f]["max_rel_dE"] for f in classical}
    assert entry["strongest"] == min(errs, key=errs.get)
    assert entry["strongest"] != "logh" and entry["methods"]["logh"]["max_rel_dE"] < min(errs.values())
    lm = entry["methods"]["learned"]
    assert entry["ratios"]["equal_force_evals"]["strongest"] == pytest.approx(
        lm["max_rel_dE"] / errs[entry["strongest"]], rel=1e-12)
    assert entry["ratios"]["equal_force_evals"]["strongest"] == pytest.approx(
        max(entry["ratios"]["equal_force_evals"][f] for f in classical), rel=1e-12)
    walls = {f: entry["methods"][f]["equal_wall_time"]["max_rel_dE"] for f in classical}
    assert entry["strongest_wall"] == min(walls, key=walls.get)
    sw = entry["strongest"]
    assert entry["ratios_trajectory"]["equal_force_evals"]["strongest"] == pytest.approx(
        lm["position_error_rel"] / entry["methods"][sw]["position_error_rel"], rel=1e-12)


def test_position_error_of_a_fixed_step_circular_orbit_equals_the_analytic_one():
    """On a circular orbit the true positions at T are a rotation of the start: the scoreboard's error
    (IAS15 reference, relative to a) equals the hand-computed one."""
    a, periods = 1.5, 2.0
    system = S.kepler_system(0.0, a, periods, "test")
    period = system.params["period"]
    run = S.run_method(I.FixedStep(period / 150), system, 1, 10_000)
    entry = S.score_system(system, {"learned": I.FixedStep(period / 150)}, baselines=("fixed",))
    phase = 2 * math.pi * periods  # whole periods: the bodies are back at the start
    rot = np.array([[math.cos(phase), -math.sin(phase)], [math.sin(phase), math.cos(phase)]])
    x_true = system.x @ rot.T
    expected = float(np.linalg.norm(run.trajectory["x"][-1] - x_true, axis=-1).max()) / a
    assert expected > 1e-4  # a real phase error of the leapfrog
    assert entry["methods"]["learned"]["position_error_rel"] == pytest.approx(expected, rel=1e-6)
    assert entry["trajectory"]["ranked"] and entry["trajectory"]["horizon"] == pytest.approx(system.duration)
    assert not entry["trajectory"]["chaotic"] and entry["size"] == a


def test_hermite_interpolation_of_a_recorded_run_is_exact_on_cubics():
    t = np.array([0.0, 0.4, 1.0])
    x = lambda s: np.array([[s ** 3 - s, 2 * s ** 2]])  # noqa: E731
    v = lambda s: np.array([[3 * s ** 2 - 1, 4 * s]])  # noqa: E731
    traj = {"t": t, "x": np.stack([x(s) for s in t]), "v": np.stack([v(s) for s in t])}
    for s in (0.1, 0.4, 0.77, 1.0):
        np.testing.assert_allclose(S.position_at(traj, s), x(s), rtol=1e-13, atol=1e-14)


def test_a_run_that_loses_its_orbit_is_not_ok():
    """A step far too large for an e = 0.9 orbit: the integrator finishes, the energy is lost; the
    status says so and the summary counts it."""
    system = S.kepler_system(0.9, 1.0, 3, "test")
    entry = S.score_system(system, {"learned": I.FixedStep(system.params["period"] / 20)},
                           baselines=("adaptive",))
    lm = entry["methods"]["learned"]
    assert lm["max_rel_dE"] > S.ENERGY_FAIL and lm["status"] == "energy_error"
    head = S.headline({"k": entry})
    assert head["not_ok"] == 1 and head["learned_status"] == {"energy_error": 1}
    assert S.judged_status("ok", 1e-5, 2.0) == "destroyed"
    assert S.judged_status("ok", 1e-5, None) == "ok"
    assert S.judged_status("max_steps", 1e-5, 0.0) == "max_steps"


# ---------------------------------------------------------------- the problems
def test_figure_eight_returns_to_its_start_after_one_period():
    m, x, v, period = P.figure_eight()
    run = I.integrate(I.RecursiveAdaptive(0.005), m, x, v, period)
    assert run.metrics["status"] == "ok"
    assert np.abs(run.trajectory["x"][-1] - x).max() < 1e-4
    assert np.abs(v.sum(0)).max() < 1e-12 and np.abs((m[:, None] * x).sum(0)).max() < 1e-12


def test_outer_solar_system_has_jupiter_on_its_known_orbit():
    m, x, v = P.outer_solar_system()
    r = x[1] - x[0]
    u = v[1] - v[0]
    mu = m[0] + m[1]
    a = 1.0 / (2.0 / np.linalg.norm(r) - u @ u / mu)  # vis-viva
    assert a == pytest.approx(5.20, abs=0.02)
    assert 2 * math.pi * math.sqrt(a ** 3 / mu) == pytest.approx(4332.6, rel=2e-3)  # days


def test_plummer_sample_is_in_henon_units():
    m, x, v = P.plummer(2000, 3)
    kin = 0.5 * float(m @ (v * v).sum(-1))
    pot = float(I.energies(x[None], np.zeros_like(v)[None], m)[0])
    assert m.sum() == pytest.approx(1.0)
    assert kin + pot == pytest.approx(-0.25, abs=0.02)
    assert -2 * kin / pot == pytest.approx(1.0, abs=0.08)  # virial equilibrium


# ---------------------------------------------------------------- the command
def write_ckpt(tmp_path) -> str:
    cfg = factor_cfg(symmetric_iterations=0, recursive=True)
    payload = build_payload(7, perturbed_model(cfg).state_dict(), None, cfg, NormScales().to_dict())
    return str(save_checkpoint(tmp_path / "a" / "model" / "model_epoch_0007.pt", payload))


def test_practitioner_quick_suite_end_to_end(tmp_path):
    """A two-body checkpoint on problems of 2, 3 and 16 bodies; the headline is against strongest."""
    out = tmp_path / "board"
    assert evaluate.main(["--checkpoint", write_ckpt(tmp_path), "--suite", "practitioner_quick", "--workers", "1",
                          "--out", str(out), "--no-plots"]) == 0
    board = json.loads((out / "scoreboard.json").read_text())
    systems = board["systems"]
    quick = {s.name: s for s in S.practitioner_systems(quick=True)}
    assert set(systems) == set(quick)
    assert {e["N"] for e in systems.values()} == {2, 3, 16}
    assert "recursive_soft_blend_clip" in systems["plummer_N16_eps0.05"]["methods"]  # the one softened system
    for name, e in systems.items():
        assert e["source"], name
        assert e["strongest"] in S.CLASSICAL
        assert set(e["methods"]) >= {"learned", *S.families_for(quick[name]), "ias15"} - {"logh"}
        assert e["methods"]["learned"]["status"] in ("ok", "energy_error", "destroyed", "max_steps", "bad_dt",
                                                     "nonfinite")
    head = board["summary"]["headline"][board["checkpoints"][0]["label"]]
    ratios = [e["ratios"]["equal_force_evals"]["strongest"] for e in systems.values()]
    assert head["energy_equal_evals"] == pytest.approx(float(np.median(ratios)))
    assert head["not_ok"] == sum(e["methods"]["learned"]["status"] != "ok" for e in systems.values())
    assert "strongest" in (out / "scoreboard.md").read_text()


def test_users_own_system_from_a_file(tmp_path, capsys):
    m, x, v, period = kepler_ic(0.6, 2.0)
    ic = tmp_path / "binary.txt"
    np.savetxt(ic, np.column_stack([m, x, v]))
    out = tmp_path / "mine"
    ck = write_ckpt(tmp_path)
    assert evaluate.main(["--checkpoint", ck, "--system", str(ic), "--duration", "2P", "--workers", "1",
                          "--out", str(out), "--no-plots"]) == 0
    board = json.loads((out / "scoreboard.json").read_text())
    assert list(board["systems"]) == ["binary"]
    entry = board["systems"]["binary"]
    assert entry["family"] == "user" and entry["duration"] == pytest.approx(2 * period, rel=1e-12)
    assert entry["strongest"] in S.CLASSICAL
    # bad input: one line, exit 2, nothing written
    bad_out = tmp_path / "bad"
    capsys.readouterr()
    for args in (["--system", str(ic)], ["--system", str(ic), "--duration", "-3"],
                 ["--system", str(tmp_path / "none.txt"), "--duration", "5"]):
        assert evaluate.main(["--checkpoint", ck, *args, "--out", str(bad_out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("evaluate: error:"), err
    assert not bad_out.exists()


def test_users_file_is_judged_in_its_centre_of_mass_frame(tmp_path):
    """A binary given with its primary at rest (as often written down): in that frame E = +e / r_p > 0 for an equal
    pair, so the board would call it unbound and divide its errors by the drift's energy. The system is moved to
    its centre-of-mass frame: E is the orbit's -m1 m2 / (2a), it is bound, and the relative orbit is the file's."""
    m, x, v, _ = kepler_ic(0.6, 2.0, [1.0, 0.5], 2)
    x, v = x - x[0], v - v[0]  # the primary at rest at the origin
    ic = tmp_path / "primary_at_rest.txt"
    np.savetxt(ic, np.column_stack([m, x, v]))
    sys = S.file_system(ic, "3P")
    np.testing.assert_allclose((sys.m[:, None] * sys.x).sum(0), 0.0, atol=1e-15)
    np.testing.assert_allclose((sys.m[:, None] * sys.v).sum(0), 0.0, atol=1e-15)
    np.testing.assert_allclose(sys.x[1] - sys.x[0], x[1] - x[0], rtol=1e-14)
    assert float(I.energies(sys.x[None], sys.v[None], sys.m)[0]) == pytest.approx(-1.0 * 0.5 / (2 * 2.0), rel=1e-12)
    assert sys.bounded
    v_rel = float(np.linalg.norm(v[1]))
    assert sys.params["centre_of_mass_speed"] == pytest.approx(v_rel * 0.5 / 1.5, rel=1e-12)


@pytest.mark.parametrize("suite,n,mass", [("practitioner", 2, 1.0), ("standard", 2, [1.0, 1e-3]),
                                          ("standard", 3, [1.0, 2.0, 3.0]), ("standard", 4, 1.0)])
def test_every_suite_system_starts_with_its_centre_of_mass_at_rest(suite, n, mass):
    """E is a system's own only in its centre-of-mass frame (a moving centre puts its kinetic energy into E, which
    shrinks every |dE/E| and the Kozai-Lidov triple's pair once unbound the triple): every system of the suites,
    unequal masses included, starts with total momentum and centre of mass at zero."""
    for sys in S.suite_systems(suite, n, 3, 0.0, mass):
        m, x, v = sys.m, sys.x, sys.v
        scale_p = float(m.sum() * np.sqrt((v * v).sum(1)).max())  # the rounding of a velocity, times the mass
        assert np.linalg.norm((m[:, None] * v).sum(0)) <= 1e-12 * scale_p, sys.name
        assert np.linalg.norm((m[:, None] * x).sum(0)) / m.sum() <= 1e-12 * sys.size, sys.name


def test_kozai_lidov_triple_is_bound_and_its_planet_reaches_the_quadrupole_e_max():
    """The practitioner suite's Kozai-Lidov triple, integrated by REBOUND's IAS15 over the board's duration:
    bound (E < 0), and the planet's eccentricity climbs from 0.05 to the test-particle quadrupole maximum
    sqrt(1 - 5/3 cos^2 75 deg) = 0.94 within it (an inner pair built off its own centre of mass drifted
    out of the triple and stayed near e = 0.05)."""
    sys = next(s for s in S.practitioner_systems() if s.name == "kozai_lidov_i75")
    m, x, v = sys.m, sys.x, sys.v
    pe = sum(-m[i] * m[j] / np.linalg.norm(x[i] - x[j]) for i in range(3) for j in range(i + 1, 3))
    assert 0.5 * float((m * (v * v).sum(1)).sum()) + pe < 0
    sim = rebound.Simulation()
    sim.integrator = "ias15"
    for k in range(3):
        sim.add(m=m[k], x=x[k, 0], y=x[k, 1], z=x[k, 2], vx=v[k, 0], vy=v[k, 1], vz=v[k, 2])
    ecc = []
    for t in np.linspace(0.0, sys.duration, 1200)[1:]:
        sim.integrate(t)
        ecc.append(sim.particles[1].orbit(primary=sim.particles[0]).e)
    e_quad = math.sqrt(1.0 - 5.0 / 3.0 * math.cos(math.radians(75.0)) ** 2)
    assert ecc[0] < 0.1
    assert abs(max(ecc) - e_quad) < 0.03


def test_clip_share_counts_the_steps_where_the_recursion_clip_changed_the_step(tmp_path):
    """A recursion whose h doubles whenever body 1 is above the x axis: at each jump the clip changes the step
    (h^2 / dt_prev would be 4x or 1/4 the last one), and the run's ``clip_acts`` equals the count recomputed from
    its own trajectory; a smooth classical recursion on the same orbit has none, an unclipped one reports None; the
    board names a learned run whose clip acted on more than 1 % of its steps."""
    m, x, v, _ = kepler_ic(0.3, 1.0)

    def h(x, v, a, m):
        return 0.004 if x[1, 1] > 0 else 0.002

    run = I.integrate(I.RecursivePolicy(h, "jumpy", clip=1.2), m, x, v, 1e9, max_steps=3000)
    xs, vs, dts = run.trajectory["x"], run.trajectory["v"], run.trajectory["dt"]
    acted = sum(dts[k] != h(xs[k - 1], None, None, None) ** 2 / dts[k - 1] for k in range(2, len(dts)))
    assert run.metrics["status"] == "max_steps" and acted >= 2
    assert run.metrics["clip_acts"] == acted and run.metrics["clip_share"] == acted / 3000
    smooth = I.integrate(I.RecursiveAdaptive(0.01, clip=1.2), m, x, v, 20.0)
    assert smooth.metrics["clip_acts"] == 0 and smooth.metrics["clip_share"] == 0.0
    plain = I.integrate(I.RecursiveAdaptive(0.01), m, x, v, 20.0)
    assert plain.metrics["clip_acts"] is None and "clip_share" not in plain.metrics

    entry = {"strongest": "recursive_clip", "methods": {"learned": {"clip_share": 0.17},
                                                        "recursive_clip": {"clip_share": 0.0}}}
    line = evaluate.clip_lines({"kepler_e0.999_3d": entry, "quiet": {"methods": {"learned": {"clip_share": 0.0}}}})
    assert line[0].endswith("on: kepler_e0.999_3d 17 % (recursive_clip 0 %).")
    assert evaluate.clip_lines({"quiet": {"methods": {"learned": {"clip_share": 0.005}}}}) == []
