"""driver/passage_fit.py: the family fitted offline on its training distribution, judged per family at two windows."""
import json
import math

import numpy as np
import pytest
import torch

from aits import Config, NormScales, Stepper, build_model
from aits.checkpoint import load_checkpoint
from driver import passage_fit as PF

TINY = ["--window", "30", "--judge", "60", "--systems", "10"]


def test_family_table_means_per_family_and_counts_blown_rows():
    rows = np.array([1.0, 2.0, np.nan, 5.0])
    base = np.array([0.5, 1.0, 1.0, 6.0])
    fam = np.array([0, 0, 1, 3])
    t = PF.family_table(rows, base, fam)
    assert t["all"] == {"gain": pytest.approx((0.5 + 1.0 - 1.0) / 3), "systems": 4, "blown": 1}
    assert t["binary"]["gain"] == pytest.approx(0.75) and t["triple"] == {"gain": None, "systems": 1, "blown": 1}
    assert "planets" not in t and t["few_body"]["gain"] == pytest.approx(-1.0)


def test_fit_writes_a_checkpoint_whose_scores_the_score_mode_repeats(tmp_path, capsys):
    out = tmp_path / "fit"
    assert PF.main(["--config", "configs/generalist.yaml", "--out", str(out), "--iters", "4", "--batch", "4",
                    "--pool", "8", *TINY]) == 0
    doc = json.loads((out / "passage_fit.json").read_text())
    fit = doc["rules"]["fit"]
    assert [h[0] for h in doc["history"]] == [4] and fit["window"]["all"]["systems"] == 10
    assert fit["window"]["all"]["gain"] != 0.0  # four Adam steps moved the rule off the classical one
    ck = load_checkpoint(out / "model_fit.pt")
    assert ck["epoch"] == 4 and Config.from_dict(ck["config"]).model.output == "factor"
    # the checkpoint is the fitted rule: scored alone it gives the same per-family numbers
    assert PF.main(["--score", str(out / "model_fit.pt"), "--out", str(tmp_path / "s"), *TINY]) == 0
    again = json.loads((tmp_path / "s" / "passage_fit.json").read_text())["rules"][str(out / "model_fit.pt")]
    assert again == fit
    assert "| fit | 30 |" in (out / "passage_fit.md").read_text()


def test_the_classical_rule_scores_zero_and_its_objective_is_the_rollouts():
    cfg = Config.load("configs/generalist.yaml")
    *val, fam = PF.drawn(cfg, 6, 123)
    rows = PF.objectives(build_model(cfg), Stepper(cfg, NormScales()), val, 20)
    assert np.isfinite(rows).all()
    t = PF.family_table(rows, rows, fam)
    assert t["all"]["gain"] == 0.0 and sum(v["systems"] for k, v in t.items() if k != "all") == 6
    model = build_model(cfg)
    with torch.no_grad():  # a constant factor 1.8x the classical one: other rollouts, other rows
        model.net[-1].bias.fill_(0.6)
    assert not np.allclose(PF.objectives(model, Stepper(cfg, NormScales()), val, 20), rows)
    # the times covered: every step 3^tanh(0.6) = 1.80x the classical one at the same state, so about 1.8x the
    # time in as many steps (the states along the way differ: 1.76 here)
    faster, covered = PF.objectives(model, Stepper(cfg, NormScales()), val, 20, with_time=True)
    base, base_covered = PF.objectives(build_model(cfg), Stepper(cfg, NormScales()), val, 20, with_time=True)
    t = PF.family_table(faster, base, fam, covered, base_covered)
    assert t["all"]["time"] == pytest.approx(3 ** math.tanh(0.6), rel=0.05)


def test_bad_input_is_one_error_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        PF.main(["--out", str(tmp_path)])
    assert exc.value.code == 2 and "either --config" in capsys.readouterr().err
    assert PF.main(["--score", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("passage_fit: error:") and "missing.pt" in err[0]
