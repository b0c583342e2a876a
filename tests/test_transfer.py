"""One member of the family for several systems, run on others (aits.oracle.fit_pooled, driver/transfer.py;
issue 19, G4)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from aits import build_payload, save_checkpoint
from aits import distill as D
from aits import integrators as I
from aits import oracle as O
from aits.config import Config
from aits.model import build_model
from aits.norm import NormScales
from aits.scoreboard import run_method
from helpers import mixture_factor_cfg

RULE = (0.01, 3.0, 1.2, "blend")


def _systems(family, seed, count, periods=2.0):
    s = replace(mixture_factor_cfg().system, mixture={family: 1.0})
    return [O.leading_part(x, *RULE) for x in D.mixture_systems(s, seed, count, periods)]


def _j(h, sys):
    run = run_method(I.RecursivePolicy(h, "oracle", RULE[2]), sys, 1, 10 ** 6)
    return run.metrics["max_rel_dE"] * run.metrics["force_evals"] ** 2


def test_the_leading_part_costs_about_the_fit_evaluations():
    s = D.mixture_systems(replace(mixture_factor_cfg().system, mixture={"binary": 1.0}), 2, 1, 40.0)[0]
    cut = O.leading_part(s, *RULE, fit_evals=3000)
    probe = O.LinearFactorStep([], [], [], [], RULE[0], RULE[1], s.eps, RULE[3])
    full = run_method(I.RecursivePolicy(probe, "oracle", RULE[2]), s, 1, 10 ** 6, record=False)
    assert full.metrics["force_evals"] > 3000  # 40 periods cost more: the system is cut
    part = run_method(I.RecursivePolicy(probe, "oracle", RULE[2]), cut, 1, 10 ** 6, record=False)
    assert cut.duration < s.duration and abs(part.metrics["force_evals"] - 3000) < 30
    short = replace(s, duration=s.duration / 100)
    assert O.leading_part(short, *RULE, fit_evals=3000) is short  # cheaper than the cap: kept whole


def test_pooled_standardisation_of_one_system_is_its_own():
    sys_ = _systems("triple", 3, 1)[0]
    j0, keep, mean, std = O.pooled_standardisation([sys_], *RULE)
    ref, _, keep1, mean1, std1 = O.standardisation(sys_, *RULE[:3], O.FIT_EVALS, RULE[3])
    assert keep.tolist() == keep1.tolist() and np.allclose(mean, mean1) and np.allclose(std, std1, rtol=1e-9)
    probe = O.LinearFactorStep([], [], [], [], RULE[0], RULE[1], sys_.eps, RULE[3])
    assert j0[0] == pytest.approx(_j(probe, sys_), rel=1e-12)


def test_a_pooled_fit_is_no_worse_on_the_mean_and_its_ratios_are_what_its_runs_do():
    systems = _systems("binary", 5, 3)
    fit = O.fit_pooled(systems, *RULE, max_runs=14)
    ratios = fit.ratios()
    assert len(ratios) == 3 and all(math.isfinite(r) for r in ratios)
    assert np.mean(np.log(ratios)) <= 1e-12  # starts at the classical rule: never worse on the mean
    assert any(c != 0.0 for c in fit.w)  # 14 runs on eccentric binaries find a shape
    # rebuilt from what it reports, the member does exactly what the fit says, system by system
    for s, r, j0 in zip(systems, ratios, fit.j_classical):
        h = O.LinearFactorStep(fit.w, fit.keep, fit.mean, fit.std, RULE[0], RULE[1], s.eps, RULE[3])
        classical = O.LinearFactorStep([], [], [], [], RULE[0], RULE[1], s.eps, RULE[3])
        assert _j(classical, s) == pytest.approx(j0, rel=1e-12)
        assert _j(h, s) / j0 == pytest.approx(r, rel=1e-12)
    # the J ratio is scale-free: the same systems in other units (lengths x 7, masses x 0.3) give the same
    scaled = []
    for s in systems:
        L, Mass = 7.0, 0.3
        scaled.append(replace(s, x=s.x * L, v=s.v * math.sqrt(Mass / L), m=s.m * Mass,
                              duration=s.duration * math.sqrt(L ** 3 / Mass)))
    j = [O.system_j(fit.w, fit.keep, fit.mean, fit.std, *RULE, s) / O.system_j(np.zeros(len(fit.keep)), fit.keep,
         fit.mean, fit.std, *RULE, s) for s in scaled]
    assert np.allclose(j, ratios, rtol=1e-6)


def test_a_pooled_fit_refuses_a_system_without_a_finite_classical_j():
    sys_ = _systems("binary", 5, 1)[0]
    frozen = replace(sys_, v=np.zeros_like(sys_.v), x=np.zeros_like(sys_.x) + np.arange(len(sys_.m))[:, None])
    with pytest.raises(ValueError, match="no finite J"):
        O.fit_pooled([sys_, replace(frozen, name="collide")], *RULE, max_runs=3)


def _checkpoint(tmp_path):
    cfg = Config.from_dict(mixture_factor_cfg().to_dict(), ["features.timescale=blend"])
    return save_checkpoint(tmp_path / "a" / "model" / "model_epoch_0001.pt",
                           build_payload(1, build_model(cfg).state_dict(), None, cfg, NormScales().to_dict())), cfg


def test_transfer_command_fits_and_holds_out_other_draws(tmp_path, capsys):
    from driver import transfer

    base, cfg = _checkpoint(tmp_path)
    out = tmp_path / "t"
    assert transfer.main(["--checkpoint", str(base), "--fit", "2", "--held-out", "2", "--periods", "2",
                          "--families", "binary", "--max-runs", "10", "--workers", "1", "--out", str(out)]) == 0
    res = json.loads((out / "transfer.json").read_text())
    fam = res["families"][0]
    assert fam["family"] == "binary" and res["timescale"] == "blend" and res["eta0"] == pytest.approx(0.01)
    assert fam["fit"]["systems"] == ["binary_0_0", "binary_0_1"]
    assert fam["held_out"]["systems"] == [f"binary_{transfer.HELD_OUT_STREAM}_{k}" for k in range(2)]
    # the held-out ratios are what the reported member does on those draws
    held = _systems("binary", transfer.HELD_OUT_STREAM, 2)
    for s, r in zip(held, fam["held_out"]["ratios"]):
        args = (fam["keep"], fam["mean"], fam["std"], *RULE, s)
        assert O.system_j(fam["w"], *args) / O.system_j(np.zeros(len(fam["keep"])), *args) == pytest.approx(r, rel=1e-12)
    assert fam["held_out"]["median"] == pytest.approx(float(np.median(fam["held_out"]["ratios"])))
    assert "| binary |" in (out / "transfer.md").read_text()
    assert "transfer: 1 families" in capsys.readouterr().out
    # the fitted member, taken from the file, on a suite: each ratio is what it and the classical rule do there
    out2 = tmp_path / "s"
    assert transfer.main(["--checkpoint", str(base), "--members", str(out / "transfer.json"), "--suite",
                          "practitioner_quick", "--workers", "1", "--out", str(out2)]) == 0
    res2 = json.loads((out2 / "transfer.json").read_text())
    assert res2["families"] == res["families"] and res2["suite"] == "practitioner_quick"
    from aits.scoreboard import suite_systems

    systems = {s.name: s for s in suite_systems("practitioner_quick", 4, 3, 0.0)}
    assert set(res2["suite_ratios"]) == set(systems)
    name = "kepler_e0.99"
    part = O.leading_part(systems[name], *RULE)
    args = (fam["keep"], fam["mean"], fam["std"], *RULE, part)
    want = O.system_j(fam["w"], *args) / O.system_j(np.zeros(len(fam["keep"])), *args)
    assert res2["suite_ratios"][name]["binary"] == pytest.approx(want, rel=1e-12)
    assert "| kepler_e0.99 |" in (out2 / "transfer.md").read_text()
    # distilled: one network holds the member's field on the states of its fit and held-out draws
    from driver import distill

    out3 = tmp_path / "dist"
    assert distill.main(["--checkpoint", str(base), "--transfer", str(out / "transfer.json"), "--iters", "300",
                         "--workers", "1", "--out", str(out3)]) == 0
    doc = json.loads((out3 / "distill.json").read_text())
    assert [r["name"] for r in doc["records"]] == fam["fit"]["systems"] + fam["held_out"]["systems"]
    assert doc["transfer"] == str(out / "transfer.json") and doc["systems"] == 4
    h = O.LinearFactorStep(fam["w"], fam["keep"], fam["mean"], fam["std"], RULE[0], RULE[1], 0.0, RULE[3])
    spreads = []
    for s in _systems("binary", 0, 2) + held:
        feats, target = D.member_field(s, fam["keep"], fam["w"], fam["mean"], fam["std"], *RULE)
        assert np.allclose([h.factor(f) for f in feats], RULE[0] * RULE[1] ** target, rtol=1e-12)
        spreads.append(np.std(target))
    assert max(spreads) > 0.05  # the member reshapes the steps there: a field worth holding
    # the members must belong to the checkpoint's rule
    other = json.loads((out / "transfer.json").read_text())
    other["clip"] = 1.5
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit):
        transfer.main(["--checkpoint", str(base), "--members", str(tmp_path / "other.json"), "--suite",
                       "practitioner_quick", "--out", str(tmp_path / "o")])
    assert "fitted for (eta0, M, clip, timescale)" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--fit", "0"], "--fit, --held-out, --max-runs and --workers must be >= 1"),
    (["--periods", "0"], "--periods must be > 0"),
    (["--families", "binary", "comets"], "--families: unknown comets"),
    (["--members", "x.json"], "--members needs --suite"),
    (["--members", "nothing.json", "--suite", "practitioner_quick"], "nothing.json: not a transfer.json"),
])
def test_transfer_command_rejects_bad_input_in_one_line(tmp_path, capsys, args, message):
    from driver import transfer

    base, _ = _checkpoint(tmp_path)
    with pytest.raises(SystemExit):
        transfer.main(["--checkpoint", str(base), *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not (tmp_path / "o").exists()
