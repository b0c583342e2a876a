"""The rule you can take home: aits.load_rule (aits/rule.py), aits-export (driver/export.py) and the
examples that use them (examples/rule_numpy.py reads only the JSON; examples/rebound_learned_step.py)."""
from __future__ import annotations

import doctest
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import aits
import aits.rule as R
from aits import Config, NormScales, build_payload, save_checkpoint
from aits import integrators as I
from aits.model import build_model
from aits.physics import kepler_ic
from aits.policy import learned_methods
from driver import export

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def checkpoint(path: Path, model: dict, features: dict | None = None, **system) -> str:
    """A checkpoint of a small model whose output really depends on its input (weights shaken)."""
    cfg = Config.from_dict({"features": features or {"feature_type": "scale_free"}, "run": {"seed": 7},
                            "system": system, "model": {"hidden_dims": [16, 16], **model}})
    net = build_model(cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return str(save_checkpoint(path, build_payload(9, net.state_dict(), None, cfg, NormScales().to_dict())))


FACTOR = {"output": "factor", "init_factor": 0.02}
MODELS = {"recursive": {**FACTOR, "recursive": True}, "explicit": FACTOR,
          "symmetric": {**FACTOR, "symmetric_iterations": 1},
          "fourier": {**FACTOR, "recursive": True, "fourier_scale": 0.3, "fourier_dim": 8, "activation": "silu"}}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("rule_ckpts")
    out = {name: checkpoint(d / f"{name}.pt", model) for name, model in MODELS.items()}
    out["softened"] = checkpoint(d / "softened.pt", FACTOR, softening=0.05, ic="random", num_particles=3)
    out["blend"] = checkpoint(d / "blend.pt", MODELS["recursive"], {"feature_type": "scale_free", "timescale": "blend"},
                              softening=0.05, ic="random", num_particles=3)
    out["soft_blend"] = checkpoint(d / "soft_blend.pt", MODELS["recursive"],
                                   {"feature_type": "scale_free", "timescale": "soft_blend"}, softening=0.3, ic="random",
                                   num_particles=3)
    for ts in ("prs_lean", "prs_point_lean"):  # eps 0.004: f6 near 0.01, where prs_point_lean hands back
        out[ts] = checkpoint(d / f"{ts}.pt", MODELS["recursive"], {"feature_type": "scale_free", "timescale": ts},
                             softening=0.004, ic="random", num_particles=3)
    out["radial"] = checkpoint(d / "radial.pt", MODELS["recursive"], {"feature_type": "scale_free", "timescale":
                                                                     "soft_blend", "radial_feature": "energy"})
    out["seed"] = checkpoint(d / "seed.pt", {"init_dt": 0.01}, {"history_len": 2})
    return out


def library_run(path: str, e: float = 0.9, steps: int = 200, system=None):
    """The evaluation's own run of the checkpoint's ``learned`` method: its trajectory."""
    method = learned_methods(aits.load_checkpoint(path))["learned"]
    m, x, v, _ = system or kepler_ic(e, 1.0)
    ck = aits.load_checkpoint(path)
    eps = float(ck["config"]["system"]["softening"])
    run = I.integrate(method, m, x, v, 1e9, eps=eps, max_steps=steps)
    assert run.metrics["status"] == "max_steps"
    return m, run.trajectory


# ---------------------------------------------------------------- aits.load_rule
@pytest.mark.parametrize("name,mode,k", [("recursive", "recursive", 0), ("explicit", "explicit", 0),
                                         ("symmetric", "symmetric", 1), ("seed", "seed", 0)])
def test_load_rule_modes(ckpts, name, mode, k):
    rule = aits.load_rule(ckpts[name])
    assert (rule.mode, rule.k, rule.eps, rule.substeps) == (mode, k, 0.0, 1)
    text = rule.describe()
    assert mode.split()[0] in text or (mode == "symmetric" and "time-symmetric" in text)
    assert ckpts[name] in text and "epoch 9" in text
    assert aits.load_rule(aits.load_checkpoint(ckpts[name])).mode == mode  # a dict works as well


@pytest.mark.parametrize("name", ["recursive", "explicit", "symmetric", "seed", "softened"])
def test_stepper_reproduces_the_evaluation_steps(ckpts, name):
    """Fed the states of the evaluation's own run, the stepper returns exactly the steps it took."""
    system = None
    if name == "softened":  # three softened bodies: the features' N > 2 branch and eps
        rng = np.random.default_rng(1)
        system = (rng.uniform(0.5, 1.5, 3), rng.normal(size=(3, 2)), 0.3 * rng.normal(size=(3, 2)), None)
    m, tr = library_run(ckpts[name], steps=120, system=system)
    rule = aits.load_rule(ckpts[name])
    rule.start(tr["x"][0], tr["v"][0], m)
    got = [rule.next_dt(x, v, None, m) for x, v in zip(tr["x"][:-1], tr["v"][:-1])]
    np.testing.assert_array_equal(got, tr["dt"][1:])
    assert rule.steps == 120 and len(set(np.round(got, 14))) > 60  # the steps really vary
    if rule.mode == "explicit" or name == "softened":
        assert [rule.dt(x, v, m) for x, v in zip(tr["x"][:-1], tr["v"][:-1])] == got


def test_softening_of_the_target_systems(ckpts, tmp_path):
    """load_rule(softening=) and aits-export --softening: the evaluation's rule for softened systems."""
    rule = aits.load_rule(ckpts["explicit"], softening=0.2)
    assert rule.eps == 0.2 and "softening 0.2" in rule.describe()
    rng = np.random.default_rng(5)
    m, x, v = rng.uniform(0.5, 1.5, 3), rng.normal(size=(3, 2)), 0.3 * rng.normal(size=(3, 2))
    run = I.integrate(learned_methods(aits.load_checkpoint(ckpts["explicit"]), eps=0.2)["learned"], m, x, v, 1e9,
                      eps=0.2, max_steps=50)
    tr = run.trajectory
    assert [rule.dt(xi, vi, m) for xi, vi in zip(tr["x"][:-1], tr["v"][:-1])] == list(tr["dt"][1:])
    assert rule.dt(x, v, m) != aits.load_rule(ckpts["explicit"]).dt(x, v, m)
    out = tmp_path / "soft.json"
    assert export.main(["--checkpoint", ckpts["explicit"], "--out", str(out), "--softening", "0.2"]) == 0
    jr = load_example("rule_numpy").JsonRule(out)
    assert jr.eps == 0.2 and jr.dt(x, v, m) == pytest.approx(rule.dt(x, v, m), rel=1e-13)
    with pytest.raises(ValueError, match="softening must be finite and >= 0"):
        aits.load_rule(ckpts["explicit"], softening=-1.0)


def test_recursion_divides_by_the_step_it_returned(ckpts):
    rule = aits.load_rule(ckpts["recursive"])
    m, x, v, _ = kepler_ic(0.7, 1.0)
    a = rule.accelerations(x, m)
    rule.start(x, v, m)
    h = rule.h(x, v, a, m)
    assert rule.next_dt(x, v, a, m) == h  # first step: h itself
    assert rule.next_dt(x, v, a, m) == pytest.approx(h, rel=1e-15)  # h^2 / h
    rule.dt_prev = 2 * h  # the caller took another step: the recursion uses it
    assert rule.next_dt(x, v, a, m) == pytest.approx(h / 2, rel=1e-15)
    rule.start(x, v, m)
    assert rule.next_dt(x, v, a, m) == h


def test_symmetric_form_takes_the_callers_trial_step(ckpts):
    """The fixed point with the caller's integrator: a DKD trial gives another, self-consistent dt."""
    rule = aits.load_rule(ckpts["symmetric"])
    m, x, v, _ = kepler_ic(0.9, 1.0)
    a = rule.accelerations(x, m)
    rule.start(x, v, m)
    kdk = rule.next_dt(x, v, a, m)

    def dkd(dt):
        xh = x + 0.5 * dt * v
        v1 = v + dt * rule.accelerations(xh, m)
        x1 = xh + 0.5 * dt * v1
        return x1, v1, rule.accelerations(x1, m)

    got = rule.next_dt(x, v, a, m, trial=dkd)
    x1, v1, a1 = dkd(rule.h(x, v, a, m))
    assert got == pytest.approx(0.5 * (rule.h(x, v, a, m) + rule.h(x1, v1, a1, m)), rel=1e-15)
    assert abs(got / kdk - 1) > 1e-8


def test_rule_refuses_what_it_cannot_do(ckpts, tmp_path):
    rec, seed = aits.load_rule(ckpts["recursive"]), aits.load_rule(ckpts["seed"])
    m, x, v, _ = kepler_ic(0.5, 1.0)
    with pytest.raises(ValueError, match="explicit form; this rule is recursive"):
        rec.dt(x, v, m)
    with pytest.raises(ValueError, match="seed's mode"):
        seed.h(x, v, seed.accelerations(x, m), m)
    with pytest.raises(ValueError, match="before rule.start"):
        aits.load_rule(ckpts["explicit"]).next_dt(x, v, None, m)
    with pytest.raises(ValueError, match=r"v must have the shape of x \(2, 2\)"):
        aits.load_rule(ckpts["explicit"]).dt(x, v[:, :1], m)
    with pytest.raises(aits.CheckpointError, match="nope.pt: not found"):
        aits.load_rule(tmp_path / "nope.pt")


def test_docstring_examples_run():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(R) if t.examples]
    for t in tests:
        runner.run(t)
    res = runner.summarize(verbose=False)
    assert res.failed == 0 and res.attempted >= 10


# ---------------------------------------------------------------- aits-export and the JSON-only reader
def exported(ckpt: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{Path(ckpt).stem}.json"
    assert export.main(["--checkpoint", ckpt, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", ["recursive", "explicit", "symmetric", "fourier", "softened", "blend", "soft_blend",
                                  "prs_lean", "prs_point_lean", "radial"])
def test_json_alone_gives_the_library_dt_along_a_trajectory(ckpts, tmp_path, name):
    """examples/rule_numpy.py (no aits) from the exported JSON: the library's steps to 1e-12 along
    200 steps of a Kepler orbit at e = 0.9 integrated with the library's rule."""
    path = exported(ckpts[name], tmp_path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "aits-rule" and doc["format_version"] == 1
    assert doc["mode"]["kind"] == aits.load_rule(ckpts[name]).mode and doc["output"]["kind"] == "softplus_factor"
    assert doc["provenance"]["epoch"] == 9 and doc["provenance"]["checkpoint"] == str(Path(ckpts[name]).resolve())
    assert [f["name"] for f in doc["features"]["list"]][0] == "kinetic_over_potential"
    jr = load_example("rule_numpy").JsonRule(path)
    assert load_example("rule_numpy").check_test_vectors(jr) < 1e-12
    system = None
    assert len(doc["features"]["list"]) == (9 if "blend" in name or "lean" in name or name == "radial" else 8) == len(
        doc["test_vectors"][0]["features"])
    assert doc["features"]["list"][1]["name"] == ("radial_kinetic_over_potential" if name == "radial"
                                                  else "cos2_separation_velocity")
    if name == "blend":  # three bodies: the PRS timescale of the body that sets tau, not of the others
        from aits import problems as P
        system = P.figure_eight()
    if name in ("softened", "soft_blend", "prs_lean", "prs_point_lean"):  # soft_blend: eps 0.3, off the blend's
        rng = np.random.default_rng(4)
        system = (rng.uniform(0.5, 1.5, 3), rng.normal(size=(3, 3)), 0.3 * rng.normal(size=(3, 3)), None)
    m, tr = library_run(ckpts[name], steps=200, system=system)
    jr.start()
    got = np.array([jr.next_dt(x, v, jr.accel(x, m), m) for x, v in zip(tr["x"][:-1], tr["v"][:-1])])
    want = tr["dt"][1:]
    assert np.max(np.abs(got / want - 1)) < 1e-12
    assert np.ptp(want) > 0.1 * want.mean()  # the trajectory reaches states where the rule's step differs


def test_export_is_exact_float64(ckpts, tmp_path):
    """The JSON's weights are the library's inference weights bit for bit (full repr precision)."""
    doc = json.loads(exported(ckpts["fourier"], tmp_path).read_text())
    mlp = aits.load_rule(ckpts["fourier"])._h.mlp
    for lay, (w, b) in zip(doc["network"]["layers"], mlp.layers):
        np.testing.assert_array_equal(np.array(lay["W"]), w.T)
        np.testing.assert_array_equal(np.array(lay["b"]), b)
    np.testing.assert_array_equal(np.array(doc["network"]["fourier"]["P"]), mlp.proj)
    assert [lay["activation"] for lay in doc["network"]["layers"]] == [True, True, False]
    assert doc["network"]["activation"] == "silu"


def test_export_bad_input(ckpts, tmp_path, capsys):
    out = tmp_path / "rule.json"
    cases = [(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)], "nope.pt: not found"),
             (["--checkpoint", ckpts["seed"], "--out", str(out)], "seed-mode model"),
             (["--checkpoint", ckpts["recursive"], "--out", str(tmp_path)], "is a folder"),
             (["--out", str(out)], "--checkpoint"),
             (["--checkpoint", ckpts["recursive"], "--out", str(out), "--softening", "-1"], "--softening")]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cases.append((["--checkpoint", str(bad), "--out", str(out)], "unreadable or corrupt"))
    for argv, what in cases:
        assert export.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("export: error: ") and what in err[0], err
        assert not out.exists()
    out.write_text("keep")  # a failed export leaves an existing file alone
    assert export.main(["--checkpoint", ckpts["seed"], "--out", str(out)]) == 2
    assert out.read_text() == "keep" and not list(tmp_path.glob(".rule.json.*"))


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'aits-export = "driver.export:main"' in text


# ---------------------------------------------------------------- REBOUND with the learned step
@pytest.mark.parametrize("name", ["recursive", "symmetric"])
def test_rebound_example_short(ckpts, tmp_path, capsys, name):
    ex = load_example("rebound_learned_step")
    out = tmp_path / "rb"
    assert ex.main(["--checkpoint", ckpts[name], "--out", str(out), "--periods", "0.6", "--e", "0.9"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "energy.png").stat().st_size > 10_000
    runs = summary["runs"]
    assert set(runs) == set(ex.RUNS)
    for r in runs.values():
        assert math.isfinite(r["max_rel_dE"]) and r["max_rel_dE"] > 0
        assert r["t_final"] == pytest.approx(summary["t_end"], rel=1e-12)
    lr = runs["learned_rebound"]
    assert runs["fixed_same_steps"]["steps"] == lr["steps"]
    assert runs["fixed_same_evals"]["force_evals"] == lr["force_evals"]
    per_step = 2 + (2 if name == "symmetric" else 0)  # the rule's a(x), REBOUND's step; + 2 per trial
    assert lr["force_evals"] == per_step * lr["steps"]
    assert runs["learned_kdk"]["force_evals"] == 1 + (2 if name == "symmetric" else 1) * runs["learned_kdk"]["steps"]
    printed = capsys.readouterr().out
    assert "learned_rebound" in printed and "max |dE/E|" in printed


def test_rebound_leapfrog_is_drift_kick_drift():
    """The example's docstring says REBOUND 5's leapfrog is DKD: one step against the formula."""
    ex = load_example("rebound_learned_step")
    m, x, v, _ = kepler_ic(0.6, 1.0, dim=3)
    sim = ex.new_sim(m, x, v, 0.0)
    sim.dt = 0.07
    sim.steps(1)
    xh = x + 0.035 * v
    v1 = v + 0.07 * I.accel(xh, m)
    x1 = xh + 0.035 * v1
    xr, vr = ex.state(sim)
    np.testing.assert_allclose(xr, x1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(vr, v1, rtol=0, atol=1e-15)
