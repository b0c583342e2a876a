"""driver/screen.py: the quick screen's ratios are equal-evaluation ratios against the named classical rules."""
import json

import pytest
import torch

from aits import Config, NormScales, build_model, build_payload, save_checkpoint
from aits import scoreboard as SB
from driver import screen as S


def _classical_checkpoint(path):
    """The recommended shape with its last layer zeroed: exactly its classical rule, recursive_blend_clip."""
    cfg = Config.load("configs/generalist_anchored.yaml")
    model = build_model(cfg)
    with torch.no_grad():
        model.net[-1].weight.zero_()
        model.net[-1].bias.zero_()
    save_checkpoint(path, build_payload(1, model.state_dict(), None, cfg, NormScales().to_dict()))
    return str(path)


def test_the_classical_rule_screens_at_one_against_itself(tmp_path, capsys):
    ckpt = _classical_checkpoint(tmp_path / "model_epoch_0001.pt")
    out = tmp_path / "screen.json"
    assert S.main([ckpt, "--systems", "random_N3_s0", "--workers", "1", "--json", str(out)]) == 0
    row = json.loads(out.read_text())[ckpt]["random_N3_s0"]
    assert row["status"] == "ok"
    # the same rule at (within 2 %) the same evaluations: the same error, up to the step count's difference
    assert row["ratios"]["recursive_blend_clip"] == pytest.approx(1.0, abs=0.08)
    assert row["learned_over_strongest"] == max(row["ratios"].values())
    live = capsys.readouterr().out
    assert "random N = 3, learned / strongest: median" in live and "recursive_blend_clip / strongest" in live
    assert S.main(["--table", str(out)]) == 0  # the file prints the run's own text, summary lines included
    assert capsys.readouterr().out == live
    # the N = 4 systems are the standard suite's own (the same draw as driver/evaluate.py --bodies 4)
    s8 = S.screen_systems()["random_N4_s8"][0]
    board = {s.name: s for s in SB.suite_systems("standard", 4, 3, 0.0)}["random_N4_s8"]
    assert s8.x.shape == (4, 3) and (s8.x == board.x).all() and s8.duration == board.duration
    with pytest.raises(SystemExit):
        S.main([ckpt, "--systems", "pythagoras"])
    assert S.main([str(tmp_path / "missing.pt"), "--systems", "random_N3_s0", "--workers", "1"]) == 2


def test_the_position_ratio_is_the_drift_against_ias15(tmp_path, monkeypatch):
    """On a Kepler orbit (not chaotic: the phase error grows as dt^2 t) the classical rule drifts as far as itself at
    equal evaluations, and three times as far at a step 1.7x as large (sqrt 3: twice the evaluations' ratio)."""
    ckpt = _classical_checkpoint(tmp_path / "model_epoch_0001.pt")
    orbit = SB.kepler_system(0.9, 1.0, 10, "kepler_scale", 3)
    monkeypatch.setattr(S, "screen_systems", lambda extra=(): {"k": (orbit, ("recursive_blend_clip",))})
    row = S.screen_one(ckpt, "k")
    assert row["position_ratios"]["recursive_blend_clip"] == pytest.approx(1.0, abs=0.1)
    ref = SB.ias15(orbit)
    fine, _ = SB.match_evals("recursive_blend_clip", orbit, int(row["force_evals"] * 3 ** 0.5), 1)
    learned = SB.run_method(S.learned_methods(S.load_checkpoint(ckpt))["learned"], orbit, 1, 2_000_000)
    assert SB.position_error(learned, ref) / SB.position_error(fine, ref) == pytest.approx(3.0, rel=0.2)


def test_random_adds_fresh_standard_suite_systems_and_their_tail(tmp_path, capsys):
    """--random N:A-B screens the standard suite's draws of those seeds (alone, without --systems) and
    summarises their tail; a malformed range is refused with the flag named."""
    ckpt = _classical_checkpoint(tmp_path / "model_epoch_0001.pt")
    out = tmp_path / "screen.json"
    assert S.main([ckpt, "--random", "3:20", "--workers", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())[ckpt]
    assert list(rows) == ["random_N3_s20"]
    assert rows["random_N3_s20"]["ratios"]["recursive_blend_clip"] == pytest.approx(1.0, abs=0.08)
    captured = capsys.readouterr()
    text = captured.out
    assert "random N = 3, learned / strongest: median" in text and "above 5: 0 of 1" in text
    assert f"screen: 1/1 {ckpt} random_N3_s20" in captured.err  # the progress line of each finished run
    row = rows["random_N3_s20"]
    for fam, r in row["ratios"].items():  # each family's own tail: its error over the strongest family's
        line = next(x for x in text.splitlines() if x.startswith(f"  random N = 3, {fam} / strongest:"))
        assert f"median {row['learned_over_strongest'] / r:5.2f}" in line
    assert "median  1.00" in next(x for x in text.splitlines() if "strongest" in x and any(
        f"{f} / strongest" in x for f, r in row["ratios"].items() if r == row["learned_over_strongest"]))
    # --table prints the same table again from the --json file, running nothing; a wrong file is one line
    assert S.main(["--table", str(out)]) == 0
    assert capsys.readouterr().out == text
    for bad in ("[1, 2]", "{}", "{\"c\": {\"random_N3_s0\": {}}}"):
        (tmp_path / "bad.json").write_text(bad)
        assert S.main(["--table", str(tmp_path / "bad.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--table" in err[0] and "bad.json" in err[0]
    drawn = S.screen_systems(((3, 20),))["random_N3_s20"][0]
    assert (drawn.x == SB.random_system(3, 3, 20, 10, 0.0).x).all()
    assert S.parse_random("4:10-29") == (4, range(10, 30))
    for bad in ("4:9-3", "4", "x:1-2", "1:0-3"):
        with pytest.raises(ValueError, match="--random"):
            S.parse_random(bad)
    with pytest.raises(SystemExit):
        S.main([ckpt, "--random", "4:9-3"])
