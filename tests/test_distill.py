"""Distilling per-system oracles into one network (aits/distill.py, driver/distill.py; issue 19, G4)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from aits import build_payload, load_checkpoint, save_checkpoint
from aits import distill as D
from aits import integrators as I
from aits import oracle as O
from aits.features import scale_free_numpy
from aits.model import build_model
from aits.norm import NormScales
from aits.policy import learned_methods
from aits.scoreboard import run_method
from helpers import ETA0, M, bounded_cfg, mixture_factor_cfg


def test_distillation_holds_two_different_fields_on_one_network():
    """Two systems told apart by one feature (the mass ratio), each with its own field along another
    (the pair's kinetic over potential): one network learns both, and its factor is the targets' factor."""
    rng = np.random.default_rng(0)
    fields = []
    for ratio, slope in ((0.1, 1.5), (0.9, -1.5)):
        f = np.zeros((300, 9))
        f[:, 0] = rng.uniform(0.2, 1.8, 300)
        f[:, 5] = ratio
        fields.append((f, np.tanh(slope * (f[:, 0] - 1.0))))
    model = build_model(bounded_cfg("blend", hidden_dims=[16, 16])).double()
    stats = D.distill(model, fields, iters=1500)
    assert min(stats["r2"]) > 0.95, stats
    assert stats["loss"] < 0.05 * stats["target_var"]
    import torch

    with torch.no_grad():
        for f, t in fields:
            g = model(torch.as_tensor(f)).numpy()
            assert np.allclose(np.log(g / ETA0) / math.log(M), t, atol=0.1)
    # the fit of the two fields is no better than their mean when the network cannot tell them apart
    blind = [(np.where(np.arange(9) == 5, 0.5, f), t) for f, t in fields]
    stats_blind = D.distill(build_model(bounded_cfg("blend", hidden_dims=[16, 16])).double(), blind, iters=1500)
    assert max(stats_blind["r2"]) < 0.2, stats_blind


def test_distill_needs_a_bounded_factor_and_fields():
    with pytest.raises(ValueError, match="bounded factor"):
        D.distill(build_model(bounded_cfg(max_modulation=None)), [(np.zeros((3, 8)), np.zeros(3))])
    with pytest.raises(ValueError, match="no oracle fields"):
        D.distill(build_model(bounded_cfg()), [])


def test_mixture_systems_follow_the_weights_and_the_seed():
    s = mixture_factor_cfg().system
    a = D.mixture_systems(s, 4, 60, 3.0)
    b = D.mixture_systems(s, 4, 60, 3.0)
    assert [x.name for x in a] == [x.name for x in b] and all(np.array_equal(x.x, y.x) for x, y in zip(a, b))
    assert len({x.name for x in a}) == 60
    families = {x.family for x in a}
    assert families <= set(s.mixture) and "binary" in families
    share = sum(x.family == "binary" for x in a) / 60
    assert abs(share - s.mixture["binary"] / sum(s.mixture.values())) < 0.2
    kepler = next(x for x in a if x.family == "binary")
    # periods: the duration is 3 of the binary's own periods
    mu = kepler.m.sum()
    r, u = kepler.x[1] - kepler.x[0], kepler.v[1] - kepler.v[0]
    a_axis = 1.0 / (2.0 / np.linalg.norm(r) - u @ u / mu)
    assert kepler.duration == pytest.approx(3.0 * 2 * math.pi * math.sqrt(a_axis ** 3 / mu), rel=1e-9)
    # each system runs with the softening training gives it: the family's own, else system.softening
    soft = replace(s, softening=0.01, mixture={"binary": 1.0, "soft_few_body": 1.0})
    drawn = D.mixture_systems(soft, 4, 12, 1.0)
    assert {x.eps for x in drawn if x.family == "binary"} == {0.01}
    own = [x for x in drawn if x.family == "soft_few_body"]
    assert own and all(x.eps != 0.01 and x.eps > 0 for x in own)


def test_a_fitted_system_is_never_worse_than_the_classical_rule_and_its_field_is_the_oracles():
    s = next(x for x in D.mixture_systems(mixture_factor_cfg().system, 1, 20, 2.0) if x.family == "binary")
    rec = D.fit_system(s, 0.01, 3.0, 1.2, "blend", max_runs=10)
    assert rec["status"] == "ok" and rec["J_ratio"] <= 1.0
    feats, targets = np.asarray(rec["features"]), np.asarray(rec["targets"])
    assert feats.shape[1] == 9 and len(feats) == len(targets) and np.abs(targets).max() < 1.0
    # the oracle itself, rebuilt from its weights: its factor at the field's states is eta0 M^target
    _, _, keep, mean, std = O.standardisation(s.__class__(**{**s.__dict__, "duration": rec["fit_duration"]}),
                                               0.01, 3.0, 1.2, O.FIT_EVALS, "blend")
    h = O.LinearFactorStep(rec["w"], keep, mean, std, 0.01, 3.0, 0.0, "blend")
    assert np.allclose([h.factor(f) for f in feats], 0.01 * 3.0 ** targets, rtol=1e-12)
    # and the J ratio is what the two rules do over the fit duration
    fit_sys = s.__class__(**{**s.__dict__, "duration": rec["fit_duration"]})
    runs = [run_method(I.RecursivePolicy(r, "oracle", 1.2), fit_sys, 1, 10 ** 6)
            for r in (h, O.LinearFactorStep([], [], [], [], 0.01, 3.0, 0.0, "blend"))]
    j = [r.metrics["max_rel_dE"] * r.metrics["force_evals"] ** 2 for r in runs]
    assert rec["J_ratio"] == pytest.approx(j[0] / j[1], rel=1e-9)


def test_distill_command_writes_a_bounded_range_checked_checkpoint(tmp_path, capsys):
    from aits.config import Config
    from driver import distill

    cfg = Config.from_dict(mixture_factor_cfg().to_dict(), ["features.timescale=blend"])
    base = save_checkpoint(tmp_path / "a" / "model" / "model_epoch_0001.pt",
                           build_payload(1, build_model(cfg).state_dict(), None, cfg, NormScales().to_dict()))
    out = tmp_path / "d"
    assert distill.main(["--checkpoint", str(base), "--mixture", "3", "--periods", "1", "--max-runs", "4",
                         "--iters", "200", "--workers", "1", "--out", str(out)]) == 0
    ck = load_checkpoint(out / "model_best.pt")
    info = ck["extra"]["distill"]
    assert ck["config"]["run"]["name"] == "d"  # the board labels it by its own folder, not the base run's
    assert info["mixture"] == 3 and info["systems"] + len(info["left_out"]) == 3
    assert len(ck["feature_ranges"]["lo"]) == 9 and ck["feature_ranges"]["samples"] > 0
    doc = json.loads((out / "distill.json").read_text())
    assert [r["name"] for r in doc["records"]] == [f"{f}_3_{k}" for k, f in
                                                   enumerate(x.family for x in D.mixture_systems(cfg.system, 3, 3, 1.0))]
    rule = learned_methods(ck)["learned"]
    assert rule.h.mlp.ranges is not None
    rng = np.random.default_rng(1)
    for _ in range(50):  # the bound holds on random states, far from anything distilled
        x, v, m = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.uniform(0.1, 1, 4)
        feats, tau = scale_free_numpy(x, v, I.accel(x, m), m, 0.0, "blend")
        g = rule.h.mlp(feats)
        assert 0.01 / 3.0 * (1 - 1e-12) <= g <= 0.01 * 3.0 * (1 + 1e-12)
    assert "distill: " in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--oracle", "x"], "--oracle needs --board"),
    (["--mixture", "2", "--members", "binary"], "--members goes with --transfer"),
    (["--transfer", "nothing.json"], "nothing.json: cannot be read"),
    (["--mixture", "0"], "--mixture: must be >= 1"),
    (["--mixture", "2", "--periods", "-1"], "--periods must be > 0"),
])
def test_distill_command_rejects_bad_input_in_one_line(tmp_path, capsys, args, message):
    from driver import distill

    cfg = mixture_factor_cfg()
    base = save_checkpoint(tmp_path / "model_epoch_0001.pt",
                           build_payload(1, build_model(cfg).state_dict(), None, cfg, NormScales().to_dict()))
    with pytest.raises(SystemExit):
        distill.main(["--checkpoint", str(base), *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not (tmp_path / "o").exists()


def test_distill_command_rejects_an_unbounded_checkpoint(tmp_path, capsys):
    from driver import distill

    cfg = bounded_cfg(max_modulation=None, recursive=False)
    base = save_checkpoint(tmp_path / "model_epoch_0001.pt",
                           build_payload(1, build_model(cfg).state_dict(), None, cfg, NormScales().to_dict()))
    with pytest.raises(SystemExit):
        distill.main(["--checkpoint", str(base), "--mixture", "2", "--out", str(tmp_path / "o")])
    assert "recursive bounded-factor rule" in capsys.readouterr().err


def test_a_fresh_run_starts_from_init_weights_and_a_bad_file_is_one_line(tmp_path, capsys):
    """model.init_weights: a fresh run's first weights (what the collectors get in epoch 1) are the file's,
    a resumed run keeps its own; a missing file or one of another shape stops the run before it starts, in
    one line, and nothing already written is removed (--overwrite included)."""
    import torch

    from aits.config import Config
    from driver import train
    from driver.backends import InProcess
    from driver.trainer import Trainer
    from helpers import perturbed_model, tiny_dict, write_config

    tiny = tiny_dict(ray={"inprocess": True})
    cfg = Config.from_dict(tiny)
    src = save_checkpoint(tmp_path / "init" / "model_epoch_0004.pt",
                          build_payload(4, perturbed_model(cfg).state_dict(), None, cfg, NormScales().to_dict()))
    want = load_checkpoint(src)["model_state_dict"]
    trainer = Trainer(Config.from_dict(tiny, [f"model.init_weights={src}"]), NormScales(), InProcess(), tmp_path / "t")
    assert trainer.rewind(None) == 0
    assert all(torch.equal(trainer.weights[k], want[k]) for k in want)
    assert not all(torch.equal(trainer.weights[k], build_model(cfg).state_dict()[k]) for k in want)
    plain = Trainer(cfg, NormScales(), InProcess(), tmp_path / "p")
    plain.rewind(None)
    assert all(torch.equal(plain.weights[k], build_model(cfg).state_dict()[k]) for k in want)

    kept = tmp_path / "runs" / "m" / "model" / "model_epoch_0001.pt"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"an earlier run's checkpoint")
    missing = write_config(tmp_path, "m", model={"init_weights": str(tmp_path / "nope.pt")})
    assert train.main(["--config", missing, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.pt: not found" in err[0]
    assert kept.read_bytes() == b"an earlier run's checkpoint"
    other = write_config(tmp_path, "o", model={"init_weights": str(src), "hidden_dims": [8]})
    assert train.main(["--config", other]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit the model" in err[0]
    assert not (tmp_path / "runs" / "o" / "model").exists()
