"""The G4 oracle (aits/oracle.py): a member of the learned family fitted to one system."""
import math

import numpy as np
import pytest

from aits import integrators as I
from aits import oracle as O
from aits import scoreboard as S


def test_nelder_mead_finds_a_quadratic_minimum():
    f = lambda p: float((p[0] - 1.0) ** 2 + 3 * (p[1] + 0.5) ** 2 + 0.5 * p[0] * p[1])  # noqa: E731
    p, y, evals = O.nelder_mead(f, np.zeros(2), 0.5, 400, rtol=1e-12)
    # the minimum of this quadratic form: grad = 0 -> [2 0.5; 0.5 6] p = [2, -3]
    expect = np.linalg.solve([[2.0, 0.5], [0.5, 6.0]], [2.0, -3.0])
    assert np.allclose(p, expect, atol=1e-4) and evals <= 400


@pytest.mark.parametrize("timescale,family", [("nn", "recursive_clip"), ("blend", "recursive_blend_clip")])
def test_oracle_at_zero_weights_is_the_clipped_classical_recursion(timescale, family):
    """At w = 0 the oracle is the classical rule its family contains, for either timescale (a blend model's
    rule is the classical recursive_blend_clip, the scoreboard's candidate)."""
    sys_ = S.kepler_system(0.7, 1.0, 2, "k")
    h = O.LinearFactorStep([], [], [], [], 0.01, 3.0, 0.0, timescale)
    a = S.run_method(I.RecursivePolicy(h, "oracle", 1.2), sys_, 1, 10**6)
    b = S.run_method(S.make_baseline(family, 0.01), sys_, 1, 10**6)
    assert a.metrics["force_evals"] == b.metrics["force_evals"]
    assert a.metrics["max_rel_dE"] == b.metrics["max_rel_dE"]
    other = S.run_method(S.make_baseline("recursive_blend_clip" if timescale == "nn" else "recursive_clip", 0.01),
                         sys_, 1, 10**6)
    assert other.metrics["force_evals"] != a.metrics["force_evals"]  # the two timescales really differ


def test_oracle_beats_the_classical_recursion_on_an_eccentric_orbit():
    # FINDINGS.md 2: a per-orbit shape gains 0.65x on e = 0.9; the linear oracle must find a real gain
    sys_ = S.kepler_system(0.9, 1.0, 3, "k")
    fit, h = O.fit_oracle(sys_, 0.01, max_runs=40)
    assert fit.keep == [0, 1]  # on a Kepler orbit only u^2 r / mu and the radial cosine vary
    assert fit.j_oracle < 0.85 * fit.j_classical
    # run over the whole duration at the classical recursion's cost: lower max |dE/E| than it there
    classical = S.run_method(S.make_baseline("recursive_clip", 0.01), sys_, 1, 10**6)
    run = O.run_at_evals(h, sys_, classical.metrics["force_evals"])
    assert abs(run.metrics["force_evals"] - classical.metrics["force_evals"]) <= 0.02 * classical.metrics["force_evals"]
    assert run.metrics["max_rel_dE"] < 0.9 * classical.metrics["max_rel_dE"]
    assert math.isfinite(run.metrics["max_rel_dE"])
    # the fitted shape reshapes the steps where the classical rule does not: its factor spread over the
    # fit run's states is > 1; a constant factor's is exactly 1, and the oracle's own factor as a "learned"
    # one has the oracle's spread
    stored = {"fit_duration": fit.fit_duration, "features": fit.keep, "w": fit.w}
    shape = O.shape_spreads(sys_, stored, 0.01, 3.0, 1.2, [lambda f: 0.01, h.factor, None])
    assert shape["oracle"] > 1.2 and shape["learned"][0] == 1.0 and shape["learned"][2] is None
    assert shape["learned"][1] == pytest.approx(shape["oracle"], rel=1e-12)
    with pytest.raises(ValueError, match="kept features"):
        O.shape_spreads(sys_, {**stored, "features": [0]}, 0.01, 3.0, 1.2, [])


def test_spread_is_the_95th_over_the_5th_percentile():
    g = np.linspace(1.0, 2.0, 101)
    assert O.spread(g) == pytest.approx(1.95 / 1.05, rel=1e-12)
    assert O.spread(np.full(10, 0.01)) == 1.0


def test_headroom_command_on_a_board_and_shape_only_gives_the_same_spreads(quick_board, tmp_path, capsys):
    """driver/oracle.py on the session's quick board (one checkpoint): the table's ratios are the rows',
    the learned spread is the checkpoint's own factor over the fit run, and --shape-only on the written
    oracle.json computes the same spreads without fitting; a missing oracle.json is a one-line exit 2."""
    import json

    from driver import oracle as D

    name = "kepler_e0.9_a1_10P"
    out = tmp_path / "headroom"
    argv = [str(quick_board["out"]), "--out", str(out), "--systems", name, "--max-runs", "4", "--eta0", "0.02"]
    assert D.main(argv) == 0
    res = json.loads((out / "oracle.json").read_text())
    row, = res["systems"][name]["rows"]
    entry = quick_board["board"]["systems"][name]
    assert row["learned_max_rel_dE"] == entry["methods"]["learned"]["max_rel_dE"]
    assert row["oracle_over_strongest"] == pytest.approx(row["oracle_max_rel_dE"] / row["strongest_max_rel_dE"])
    shape = res["systems"][name]["shape"]
    # the perturbed checkpoint's g depends on its features (tests/helpers.py): a spread above 1
    assert shape["learned"][0] > 1.0 and shape["learned_median"] == shape["learned"][0] and shape["oracle"] >= 1.0
    assert f"| {name} |" in (out / "oracle.md").read_text()
    capsys.readouterr()

    del res["systems"][name]["shape"]
    (out / "oracle.json").write_text(json.dumps(res))
    assert D.main([str(quick_board["out"]), "--out", str(out), "--shape-only"]) == 0
    again = json.loads((out / "oracle.json").read_text())["systems"][name]["shape"]
    assert again == shape

    # --fit-evals: the fit covers the leading part of the duration that many evaluations reach (here all of it
    # by default); a smaller budget cuts it, is recorded, and --shape-only spreads over that same part
    fit = res["systems"][name]["fit"]
    assert res["fit_evals"] == 20_000 and fit["fit_duration"] == pytest.approx(fit["duration"])
    cut = tmp_path / "cut"
    assert D.main([*argv[:2], str(cut), *argv[3:], "--fit-evals", "400"]) == 0
    res_cut = json.loads((cut / "oracle.json").read_text())
    fit_cut = res_cut["systems"][name]["fit"]
    assert res_cut["fit_evals"] == 400 and 0 < fit_cut["fit_duration"] < 0.5 * fit_cut["duration"]
    shape_cut = res_cut["systems"][name]["shape"]
    del res_cut["systems"][name]["shape"]
    (cut / "oracle.json").write_text(json.dumps(res_cut))
    assert D.main([str(quick_board["out"]), "--out", str(cut), "--shape-only"]) == 0
    assert json.loads((cut / "oracle.json").read_text())["systems"][name]["shape"] == shape_cut
    capsys.readouterr()

    # --fits: the oracles fitted for a board are rebuilt, not fitted again (a later folder's replace an earlier's):
    # the same oracle runs to the bit, the same spreads, the fit's source and budget recorded
    reuse = tmp_path / "reuse"
    assert D.main([*argv[:2], str(reuse), *argv[3:], "--fits", f"{out},{cut}"]) == 0
    res_reuse = json.loads((reuse / "oracle.json").read_text())["systems"][name]
    assert res_reuse["rows"][0]["oracle_max_rel_dE"] == res_cut["systems"][name]["rows"][0]["oracle_max_rel_dE"]
    assert res_reuse["fit"]["from"] == str(cut / "oracle.json") and res_reuse["fit"]["fit_evals"] == 400
    assert res_reuse["fit"]["w"] == fit_cut["w"] and res_reuse["shape"] == shape_cut
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # another family than the stored fits': one line naming the file
        D.main([*argv[:2], str(tmp_path / "other"), *argv[3:-1], "0.03", "--fits", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert str(out / "oracle.json") in err[-1] and "eta0" in err[-1] and not (tmp_path / "other").exists()

    with pytest.raises(SystemExit) as exc:
        D.main([str(quick_board["out"]), "--out", str(tmp_path / "none"), "--shape-only"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "oracle.json" in err[-1] and not (tmp_path / "none").exists()


def test_learned_spread_reads_each_rule_s_own_feature_1(tmp_path):
    """driver/oracle.learned_factors takes the states' features as the oracle family computes them (feature 1 the
    cosine): a rule trained with features.radial_feature 'energy' is given its own feature 1 (the cosine times
    feature 0), so its factor is the one it takes along a run."""
    import torch

    from aits import Config, save_checkpoint
    from aits.features import scale_free_numpy, with_radial
    from aits.physics import kepler_pair
    from aits.policy import learned_methods
    from driver.oracle import learned_factors
    from helpers import bounded_cfg, checkpoint_with_box, perturbed_model

    cfg = Config.from_dict(bounded_cfg("soft_blend").to_dict(), ["features.radial_feature=energy"])
    path = save_checkpoint(tmp_path / "radial.pt", checkpoint_with_box(cfg, perturbed_model(cfg, scale=0.5)))
    g, = learned_factors({"checkpoints": [{"path": str(path), "range_check": False}]}, 0.0)
    rule = learned_methods(torch.load(path, weights_only=False), eps=0.0, range_check=False)["learned"].h
    m, x, v, _ = kepler_pair(0.9, 1.0)
    x = x + 0.3 * v  # off the apsis: the cosine is neither 0 nor 1
    a = I.accel(x, m)
    cosine, tau = scale_free_numpy(x, v, a, m, 0.0, "soft_blend")
    own = scale_free_numpy(x, v, a, m, 0.0, "soft_blend", radial="energy")[0]
    np.testing.assert_allclose(with_radial(cosine, "energy"), own, rtol=1e-13)
    assert g(cosine) == pytest.approx(rule.mlp(own), rel=1e-13)
    assert g(cosine) != pytest.approx(rule.mlp(cosine), rel=1e-3)  # the cosine itself would give another factor
    assert rule(x, v, a, m) == pytest.approx(g(cosine) * tau, rel=1e-12)
