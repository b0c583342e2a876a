"""The bounded factor (model.max_modulation): a learned step that no input can send far from the
classical rule it contains, in training (torch), evaluation (numpy) and the exported rule."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aits import Config, NormScales, Stepper, build_payload, save_checkpoint
from aits import integrators as I
from aits import problems as P
from aits.features import scale_free_numpy
from aits.model import build_model
from aits.physics import kepler_ic
from aits.policy import learned_methods
from aits.samples import StateBatch
from helpers import ETA0, M, bounded_cfg, forward_back, wild_model


def random_states(rng, count: int):
    """States far outside any training set: random N, masses over 8 decades, lengths over 6."""
    for _ in range(count):
        n = int(rng.integers(2, 9))
        m = 10.0 ** rng.uniform(-6, 2, n)
        x = rng.normal(size=(n, 3)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
        v = rng.normal(size=(n, 3)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
        yield m, x, v


def test_untrained_bounded_model_is_the_classical_rule():
    cfg = bounded_cfg()
    methods = learned_methods(build_payload(0, build_model(cfg).state_dict(), None, cfg, NormScales().to_dict()))
    m, x, v, _ = kepler_ic(0.7, 1.0)
    a = I.accel(x, m)
    h = methods["learned_symmetric"].h(x, v, a, m)
    assert h == pytest.approx(ETA0 * I.timescale(x, a), rel=0.02)


@pytest.mark.parametrize("timescale", ["nn", "blend"])
def test_bounded_factor_holds_on_adversarial_inputs_in_torch_and_numpy(timescale):
    cfg = bounded_cfg(timescale)
    model = wild_model(cfg)
    methods = learned_methods(build_payload(0, model.state_dict(), None, cfg, NormScales().to_dict()))
    h_np = methods["learned_symmetric"].h
    stepper = Stepper(cfg, NormScales())
    rng = np.random.default_rng(0)
    ratios = []
    for m, x, v in random_states(rng, 300):
        a = I.accel(x, m)
        feats, tau = scale_free_numpy(x, v, a, m, 0.0, timescale)
        assert tau == pytest.approx(I.TIMESCALES[timescale](x, v, a, m, 0.0), rel=1e-12)  # the classical rule's
        r = h_np(x, v, a, m) / (ETA0 * tau)
        prep = stepper.prepare(StateBatch.start(m[None], x[None], v[None]))
        with torch.no_grad():
            r_torch = float(stepper.step_size(model, prep.feats, prep.tau)[0]) / (ETA0 * tau)
        assert r_torch == pytest.approx(r, rel=1e-10)
        ratios.append(r)
    ratios = np.array(ratios)
    assert ((ratios >= 1 / M * (1 - 1e-12)) & (ratios <= M * (1 + 1e-12))).all()
    # the wild network really uses the range: the bound is what holds it, not a flat output
    assert ratios.min() < 0.7 and ratios.max() > 1.4
    # the same weights as an unbounded softplus factor leave the range by orders of magnitude
    free_cfg = Config.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "max_modulation": None}})
    free = learned_methods(build_payload(0, model.state_dict(), None, free_cfg, NormScales().to_dict()))
    free_ratios = []
    for m, x, v in random_states(np.random.default_rng(0), 20):
        a = I.accel(x, m)
        feats, tau = scale_free_numpy(x, v, a, m, 0.0, timescale)
        free_ratios.append(free["learned_symmetric"].h(x, v, a, m) / (ETA0 * tau))
    assert min(free_ratios) < 1 / (10 * M) or max(free_ratios) > 10 * M


def test_recursion_step_stays_within_the_clip_of_h_on_a_near_radial_orbit():
    cfg = bounded_cfg()
    methods = learned_methods(build_payload(0, wild_model(cfg).state_dict(), None, cfg, NormScales().to_dict()))
    rec = methods["learned"]
    m, x, v, period = kepler_ic(0.999, 1.0)
    run = I.integrate(rec, m, x, v, 2 * period, max_steps=200_000)
    assert run.metrics["status"] == "ok"
    xs, vs, dts = run.trajectory["x"], run.trajectory["v"], run.trajectory["dt"]
    for k in range(1, len(dts) - 1):  # the last step is clipped onto the end time
        a = I.accel(xs[k - 1], m)
        tau = I.timescale(xs[k - 1], a)
        h = rec.h(xs[k - 1], vs[k - 1], a, m)
        assert h / M * (1 - 1e-12) <= dts[k] <= h * M * (1 + 1e-12)
        assert ETA0 / M ** 2 * (1 - 1e-12) <= dts[k] / tau <= ETA0 * M ** 2 * (1 + 1e-12)


@pytest.mark.parametrize("timescale", ["nn", "blend"])
@pytest.mark.parametrize("system", ["kepler", "three_body"])
def test_bounded_recursion_is_time_reversible(system, timescale):
    cfg = bounded_cfg(timescale)
    rec = learned_methods(build_payload(0, wild_model(cfg, 0.5).state_dict(), None, cfg,
                                        NormScales().to_dict()))["learned"]
    if system == "kepler":
        m, x, v, _ = kepler_ic(0.9, 1.0)
    else:
        m, x, v, _ = P.figure_eight()
    assert forward_back(rec, m, x, v, 400) < 1e-10


def test_exported_bounded_rule_equals_the_library(tmp_path):
    import sys
    from pathlib import Path

    from aits import load_rule
    from driver import export

    cfg = bounded_cfg()
    ck = save_checkpoint(tmp_path / "b" / "model" / "model_epoch_0001.pt",
                         build_payload(1, wild_model(cfg, 1.0).state_dict(), None, cfg, NormScales().to_dict()))
    out = tmp_path / "rule.json"
    assert export.main(["--checkpoint", str(ck), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["output"]["kind"] == "bounded_factor" and doc["mode"]["clip"] == M
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import rule_numpy
    finally:
        sys.path.pop(0)
    theirs = rule_numpy.JsonRule(str(out))
    ours = load_rule(str(ck))
    m, x, v, _ = kepler_ic(0.95, 1.0)
    a = I.accel(x, m)
    ours.start(x, v, m)
    theirs.start()
    for _ in range(200):
        dt = ours.next_dt(x, v, a, m)
        assert theirs.next_dt(x, v, a, m) == pytest.approx(dt, rel=1e-12)
        x, v, a = I.kdk(x, v, a, m, dt, 0.0)


@pytest.mark.parametrize("timescale", ["nn", "blend"])
@pytest.mark.parametrize("n", [2, 3])
def test_padded_system_has_the_unpadded_features_and_gradients(n, timescale):
    """Massless far bodies (the mixture's padding) change no feature, no timescale, no gradient."""
    from aits.features import scale_free_torch
    from aits.physics import acceleration

    rng = np.random.default_rng(n)
    x, v, m = rng.normal(size=(n, 3)), rng.normal(size=(n, 3)), rng.uniform(0.2, 1.0, n)
    pad_x = np.array([[1e4, 0.0, 0.0], [2e4, 0.0, 0.0]])
    out = []
    for xx, vv, mm in ((x, v, m), (np.concatenate([x, pad_x]), np.concatenate([v, np.zeros((2, 3))]),
                                   np.concatenate([m, np.zeros(2)]))):
        xt = torch.tensor(xx)[None].requires_grad_()
        vt = torch.tensor(vv)[None].requires_grad_()
        mt = torch.tensor(mm)[None]
        feats, tau = scale_free_torch(xt, vt, acceleration(xt, mt), mt, 0.0, timescale)
        (feats.sum() + tau.sum()).backward()
        assert torch.isfinite(xt.grad).all() and torch.isfinite(vt.grad).all()
        out.append((feats.detach(), tau.detach(), xt.grad[0, :n], vt.grad[0, :n]))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
