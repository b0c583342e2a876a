"""driver/results.py: the RESULTS tables come out of the committed scoreboard files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from driver import results

BOARD = Path(__file__).resolve().parents[1] / "docs" / "results" / "practitioner_ray" / "scoreboard.json"


def test_results_tables_equal_the_committed_scoreboard(capsys):
    board = json.loads(BOARD.read_text())
    assert results.main([str(BOARD.parent)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| figure_eight |"))
    ratios = [board["systems"][label]["figure_eight"]["ratios"]["equal_force_evals"]["strongest"]
              for label in board["systems"]]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == f"{results.fmt(float(np.median(ratios)))} [{results.fmt(min(ratios))}, {results.fmt(max(ratios))}]"
    statuses = [board["systems"][label]["pythagorean"]["methods"]["learned"]["status"] for label in board["systems"]]
    pyth = next(line for line in out.splitlines() if line.startswith("| pythagorean |"))
    assert f"{statuses[0]} ×{statuses.count(statuses[0])}" in pyth


def test_results_refuses_a_folder_without_a_board(tmp_path, capsys):
    assert results.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scoreboard.json" in err[0]
