"""The range check (aits/ranges.py): the learned modulation as trained inside the training box, pulled
back to the classical rule outside it, smoothly and evenly in v (the recursion stays reversible), in
the library, the exported JSON and the checkpoint driver/validate.py writes."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aits import NormScales, build_payload, load_rule, save_checkpoint
from aits import integrators as I
from aits import problems as P
from aits.features import scale_free_numpy
from aits.physics import kepler_ic
from aits.policy import learned_methods
from aits.ranges import DELTA_FLOOR, RANGE_MARGIN, FeatureRanges, RangeTally, measure_ranges
from helpers import ETA0, M, bounded_cfg, checkpoint_with_box, forward_back, mixture_factor_cfg, wild_model


def test_weight_is_one_inside_and_fades_outside():
    r = FeatureRanges([0.0, -1.0], [2.0, 1.0], margin=0.5)
    assert r.weight(np.array([1.0, 0.0])) == 1.0 and r.weight(np.array([2.0, -1.0])) == 1.0
    delta0 = 0.5 * 2.0 + DELTA_FLOOR
    assert r.weight(np.array([2.0 + delta0, 0.0])) == pytest.approx(math.exp(-1.0), rel=1e-12)
    assert r.weight(np.array([2.0 + delta0, 1.0 + r.delta[1]])) == pytest.approx(math.exp(-2.0), rel=1e-12)
    far = [r.weight(np.array([2.0 + k * delta0, 0.0])) for k in (0.1, 0.5, 1, 2, 4)]
    assert all(a > b for a, b in zip(far, far[1:])) and far[-1] < 1e-6
    f = torch.tensor([[1.0, 0.0], [2.0 + delta0, 0.0], [-3.0, 5.0]], dtype=torch.float64)
    want = [r.weight(row) for row in f.numpy()]
    torch.testing.assert_close(r.weight_torch(f), torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
    assert FeatureRanges.from_dict(r.to_dict()).weight(np.array([2.3, 0.0])) == r.weight(np.array([2.3, 0.0]))


@pytest.mark.parametrize("bad", [{"lo": [0.0, 1.0], "hi": [1.0, 0.0]}, {"lo": [0.0], "hi": [1.0, 2.0]},
                                 {"hi": [1.0]}, {"lo": [float("nan")], "hi": [1.0]}])
def test_a_bad_box_is_one_line_naming_feature_ranges(bad):
    with pytest.raises(ValueError, match="feature_ranges") as exc:
        FeatureRanges.from_dict(bad, "checkpoint x.pt")
    assert "\n" not in str(exc.value)


def kepler_box(cfg, e_lo: float = 0.5, e_hi: float = 0.7, margin: float = 0.05) -> FeatureRanges:
    """A narrow box: the features of Kepler orbits with e in [e_lo, e_hi] (a 'training set')."""
    rows = []
    for e in np.linspace(e_lo, e_hi, 5):
        m, x, v, period = kepler_ic(e, 1.0)
        run = I.integrate(I.RecursiveAdaptive(0.05), m, x, v, period)
        rows += [scale_free_numpy(xx, vv, I.accel(xx, m), m, 0.0)[0] for xx, vv in zip(run.trajectory["x"],
                                                                                       run.trajectory["v"])]
    return FeatureRanges.of_features(np.array(rows), margin=margin)


def test_rule_as_trained_inside_the_box_classical_far_outside():
    cfg = bounded_cfg()
    model = wild_model(cfg, 1.0)
    box = kepler_box(cfg)
    checked = learned_methods(checkpoint_with_box(cfg, model, box))["learned_symmetric"].h
    plain = learned_methods(checkpoint_with_box(cfg, model, None))["learned_symmetric"].h
    unchecked = learned_methods(checkpoint_with_box(cfg, model, box), range_check=False)["learned_symmetric"].h
    m, x, v, _ = kepler_ic(0.6, 1.0)  # inside: the same step to the last bit
    a = I.accel(x, m)
    assert checked(x, v, a, m) == plain(x, v, a, m) == unchecked(x, v, a, m)
    # far outside (random states, masses over 8 decades): the classical eta0 * tau, where the plain
    # rule is anywhere in its bound [eta0 / M, eta0 M] tau
    rng = np.random.default_rng(7)
    moved = 0
    for _ in range(40):
        n = int(rng.integers(3, 7))
        m = 10.0 ** rng.uniform(-6, 2, n)
        x = rng.normal(size=(n, 3)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
        v = rng.normal(size=(n, 3)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
        a = I.accel(x, m)
        f, tau = scale_free_numpy(x, v, a, m, 0.0)
        g_checked, g_plain = checked(x, v, a, m) / tau, plain(x, v, a, m) / tau
        w = box.weight(f)
        assert g_checked == pytest.approx(ETA0 * (g_plain / ETA0) ** w, rel=1e-12)
        assert ETA0 / M * (1 - 1e-12) <= g_checked <= ETA0 * M * (1 + 1e-12)
        if w < 1e-8:
            assert g_checked == pytest.approx(ETA0, rel=1e-7)
            moved += abs(math.log(g_plain / ETA0)) > 0.05
    assert moved >= 10  # the plain rule was away from the classical one there, the checked one is not


@pytest.mark.parametrize("system", ["kepler", "three_body"])
def test_range_checked_recursion_is_time_reversible(system):
    """The box cuts through the run (part of it inside, part outside), and the map stays reversible.
    Reversible means: the recursion's clip does not act. It does with random weights of scale 0.5 here
    (the range-checked rule's coarser pericentre steps swing h by 0.37 in log in one step; measured
    0.76 off after 400 steps, the unchecked rule 1e-14), so the weights are of scale 0.3."""
    cfg = bounded_cfg()
    model = wild_model(cfg, 0.3)
    if system == "kepler":
        m, x, v, _ = kepler_ic(0.9, 1.0)
        box = kepler_box(cfg, margin=RANGE_MARGIN)
    else:  # the box of the orbit's first 5 %
        m, x, v, period = P.figure_eight()
        run = I.integrate(I.RecursiveAdaptive(0.02), m, x, v, 0.05 * period)
        box = FeatureRanges.of_features(np.array([scale_free_numpy(xx, vv, I.accel(xx, m), m, 0.0)[0] for xx, vv
                                                  in zip(run.trajectory["x"], run.trajectory["v"])]))
    rec = learned_methods(checkpoint_with_box(cfg, model, box))["learned"]
    st = I.State(m, x.copy(), v.copy(), I.accel(x, m))
    w = []
    for _ in range(400):
        rec.step(st, math.inf)
        w.append(box.weight(scale_free_numpy(st.x, st.v, st.a, m, 0.0)[0]))
    assert min(w) < 1e-2 and max(w) - min(w) > 0.3  # the check acts along the run, and varies along it
    assert forward_back(rec, m, x, v, 400) < 1e-10


def test_exported_range_check_equals_the_library(tmp_path):
    from driver import export

    cfg = bounded_cfg()
    box = kepler_box(cfg)
    ck = save_checkpoint(tmp_path / "b" / "model" / "model_best.pt",
                         checkpoint_with_box(cfg, wild_model(cfg, 1.0), box))
    out = tmp_path / "rule.json"
    assert export.main(["--checkpoint", str(ck), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["output"]["range_check"]["lo"] == box.lo.tolist()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import rule_numpy
    finally:
        sys.path.pop(0)
    theirs, ours, off = rule_numpy.JsonRule(str(out)), load_rule(str(ck)), load_rule(str(ck), range_check=False)
    assert "range check" in ours.describe() and "range check" not in off.describe()
    m, x, v, _ = kepler_ic(0.9, 1.0)
    a = I.accel(x, m)
    ours.start(x, v, m)
    off.start(x, v, m)
    theirs.start()
    differ = 0
    for _ in range(300):
        dt = ours.next_dt(x, v, a, m)
        assert theirs.next_dt(x, v, a, m) == pytest.approx(dt, rel=1e-12)
        differ += abs(off.next_dt(x, v, a, m) / dt - 1) > 1e-9
        x, v, a = I.kdk(x, v, a, m, dt, 0.0)
    assert differ > 10  # the box acted on this orbit: without the check the steps are others


def test_measured_box_holds_the_rollouts_it_was_measured_on():
    from driver import validate as V

    from aits.model import build_model

    cfg = mixture_factor_cfg()
    ck = build_payload(1, build_model(cfg).state_dict(), None, cfg, NormScales().to_dict())
    states = V.validation_states(cfg, 4)
    box = measure_ranges(ck, states, 30)
    assert box.samples == 4 * 30 and len(box.lo) == 8
    assert (box.hi > box.lo).sum() >= 5  # the mixture's draws spread most features
    rule = learned_methods(ck, cfg)["learned"]
    m, x, v, _ = states
    run = I.integrate(rule, m[0], x[0], v[0], 1e30, max_steps=30)
    for xx, vv in zip(run.trajectory["x"][:-1], run.trajectory["v"][:-1]):
        f = scale_free_numpy(xx, vv, I.accel(xx, m[0]), m[0], 0.0)[0]
        assert box.weight(f) == 1.0


def test_evaluation_scores_a_range_checked_checkpoint_both_ways(tmp_path):
    from driver.evaluate import score_task

    from aits.scoreboard import kepler_system

    cfg = bounded_cfg()
    ck = save_checkpoint(tmp_path / "b" / "model" / "model_best.pt",
                         checkpoint_with_box(cfg, wild_model(cfg, 0.3), kepler_box(cfg, margin=RANGE_MARGIN)))
    entry = score_task(str(ck), kepler_system(0.9, 1.0, 1, "practitioner", name="k"), 1)
    checked, unchecked = entry["methods"]["learned"], entry["methods"]["learned_unchecked"]
    assert checked["status"] == unchecked["status"] == "ok"
    assert checked["force_evals"] != unchecked["force_evals"]  # the box acted on this orbit
    assert entry["strongest"] is not None
    # ... and the board says how much: the e = 0.9 orbit lies outside the e = 0.5-0.7 box (its cos^2(r, u) between
    # the apsides, its u^2 r / mu at them), held at the classical rule on part of it only
    rc = checked["range_check"]
    assert rc["calls"] == checked["steps"] and rc["outside_share"] > 0.5 and 0.0 < rc["held_share"] < 1.0
    assert set(rc["features"]) <= {"cos2(r, u)", "u2 r/mu"} and 0.0 < rc["mean_weight"] < 1.0
    assert "range_check" not in unchecked
    from driver.evaluate import range_check_lines

    table = range_check_lines({"k": entry})
    assert table[-2].startswith(f"| k | {rc['outside_share']:.2f} | {rc['held_share']:.2f} |")
    assert range_check_lines({"k": {"methods": {"learned": unchecked}}}) == []
    # the headline names the systems held on most steps (here 52 % of them)
    from driver.evaluate import _headline_line

    from aits.scoreboard import headline

    assert rc["held_share"] > 0.5 and headline({"k": entry})["held_systems"] == ["k"]
    assert "held at the classical rule by the range check on most steps: 1 (k)" in _headline_line(headline({"k": entry}))
    plain = {**entry, "methods": {**entry["methods"], "learned": unchecked}}
    assert "held_systems" not in headline({"k": plain}) and "held at" not in _headline_line(headline({"k": plain}))


def test_the_tally_counts_what_the_check_did(tmp_path):
    """Rule.range_report against a recount from the box itself: every call of the step function counted with
    its own w, on states inside the box, just outside it and far outside (an N = 16 cluster)."""
    from aits.features import SCALE_FREE_NAMES

    cfg = bounded_cfg()
    box = kepler_box(cfg)
    path = save_checkpoint(tmp_path / "r" / "model" / "model_best.pt", checkpoint_with_box(cfg, wild_model(cfg, 1.0), box))
    rule = load_rule(str(path))
    states = []
    for e in (0.6, 0.8):  # inside the e = 0.5-0.7 box, then partly outside it
        m, x, v, period = kepler_ic(e, 1.0)
        run = I.integrate(I.RecursiveAdaptive(0.05), m, x, v, period)
        states += [(xx, vv, m) for xx, vv in zip(run.trajectory["x"][::7], run.trajectory["v"][::7])]
    m, x, v = P.plummer(16, 0)
    states += [(x, v, m)] * 5
    rule.start(*states[0][:2], states[0][2])
    w = []
    for x, v, m in states:
        a = I.accel(x, m)
        rule.h(x, v, a, m)
        w.append(box.weight(scale_free_numpy(x, v, a, m, 0.0)[0]))
    w = np.array(w)
    rep = rule.range_report()
    assert rep["calls"] == len(states)
    assert rep["outside_share"] == pytest.approx(np.mean(w < 1.0), abs=1e-12)
    assert rep["held_share"] == pytest.approx(np.mean(w < 0.5), abs=1e-12)
    assert rep["mean_weight"] == pytest.approx(w.mean(), rel=1e-12)
    assert 0.0 < rep["outside_share"] < 1.0 and rep["held_share"] >= 5 / len(states)
    assert set(rep["features"]) <= set(SCALE_FREE_NAMES) and sum(rep["features"].values()) == pytest.approx(1.0)
    # start() begins a new count; inside the box nothing is counted outside
    m, x, v, _ = kepler_ic(0.6, 1.0)
    rule.start(x, v, m)
    rule.h(x, v, I.accel(x, m), m)
    assert rule.range_report() == {"calls": 1, "outside_share": 0.0, "held_share": 0.0, "mean_weight": 1.0,
                                   "features": {}}
    assert load_rule(str(path), range_check=False).range_report() is None


def test_inside_is_a_zero_excess_and_counts_as_one():
    """The check's fast path (every feature inside the box: w = 1 without the excess) agrees with the excess on
    random vectors, on the box's edges and on NaN, and the tally counts it as the full path does."""
    box = FeatureRanges([0.0, -1.0, 2.0], [1.0, 1.0, 2.0])
    rng = np.random.default_rng(3)
    rows = [rng.uniform(-1.5, 2.5, 3) for _ in range(200)] + [np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0]),
                                                              np.array([0.5, 0.0, 2.0 + 1e-15]),
                                                              np.array([0.5, float("nan"), 2.0])]
    rows += [np.array([r[0], r[1], 2.0]) for r in rows[:50]]
    verdicts = [box.inside(f) for f in rows]
    assert verdicts == [bool(np.all(box.excess(f) == 0.0)) and not np.isnan(f).any() for f in rows]
    assert 10 < sum(verdicts) < len(rows) - 10  # both kinds among the rows
    assert not box.inside(rows[203])  # NaN: never inside (the full path sees it)
    fast, full = RangeTally(3), RangeTally(3)
    for f, ok in zip(rows, verdicts):
        if np.isnan(f).any():
            continue
        if ok:
            fast.add_inside()
        else:
            d = box.excess(f)
            fast.add(d, box.weight_of(d))
        d = box.excess(f)
        full.add(d, box.weight_of(d))
    assert fast.report() == full.report() and fast.calls == len(rows) - 1
