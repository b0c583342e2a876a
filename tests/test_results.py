"""driver/results.py: the RESULTS tables come out of the committed scoreboard files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pytest import approx

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


def test_profile_pools_boards_and_agrees_with_the_headline(capsys):
    board = json.loads(BOARD.read_text())
    assert results.main(["--profile", str(BOARD.parent)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| learned |"))
    heads = [h["energy_equal_evals"] for h in results.summarize(results.systems_by_label(board))["headline"].values()]
    median = results.fmt(float(np.median(heads)))
    assert row.split("|")[2].strip().startswith(median)  # the learned row is the headline's median over systems


def test_rule_profile_counts_failures_as_worst_and_the_share_within_the_bound():
    def entry(errs: dict, best: str):
        return {"strongest": best, "methods": {k: {"max_rel_dE": e} for k, e in errs.items()}}
    systems = {"a": entry({"learned": 2e-6, "adaptive": 1e-6, "fixed": 1.2e-6}, "adaptive"),
               "b": entry({"learned": 1e-5, "adaptive": None, "fixed": 1e-5}, "fixed"),
               "c": entry({"learned": 3e-4, "adaptive": 1e-4, "fixed": 5e-4}, "adaptive")}
    prof = results.rule_profile({"ck": systems})
    assert prof["learned"]["median"]["median"] == approx(2.0) and prof["learned"]["worst"]["median"] == approx(3.0)
    assert prof["learned"]["within"]["median"] == approx(1 / 3)
    assert prof["adaptive"]["worst"]["median"] == np.inf and prof["adaptive"]["median"]["median"] == approx(1.0)
    assert prof["fixed"]["median"]["median"] == approx(1.2) and prof["fixed"]["worst"]["median"] == approx(5.0)
    assert prof["fixed"]["within"]["median"] == approx(2 / 3)
    assert "symmetric_prs" not in prof  # a family no board ran is not a row


def test_results_band_columns_are_the_boards_band_ratios(capsys):
    """The start-phase board (docs/results/start_phase/shipped): the band columns and ``--versus`` are the
    median over checkpoints of the per-run band and energy ratios stored on the board."""
    board_dir = BOARD.parents[1] / "start_phase" / "shipped"
    board = json.loads((board_dir / "scoreboard.json").read_text())
    assert results.main([str(board_dir), "--versus", "recursive_blend_clip"]) == 0
    out = capsys.readouterr().out
    name = "kepler_e0.99_pericentre"
    cells = next(line for line in out.splitlines() if line.startswith(f"| {name} |")).split(" | ")
    entries = [board["systems"][label][name] for label in board["systems"]]
    band = float(np.median([e["ratios_band"]["equal_force_evals"]["strongest"] for e in entries]))
    versus = float(np.median([e["ratios"]["equal_force_evals"]["recursive_blend_clip"] for e in entries]))
    vband = float(np.median([e["ratios_band"]["equal_force_evals"]["recursive_blend_clip"] for e in entries]))
    assert cells[7].startswith(results.fmt(band)) and cells[8].startswith(results.fmt(versus))
    assert cells[9].startswith(results.fmt(vband))
    # the band of each run lies between its max |dE/E| and twice it
    for e in entries:
        for m in e["methods"].values():
            if m.get("band_rel_dE") is not None and m["status"] == "ok":
                assert m["max_rel_dE"] * (1 - 1e-9) <= m["band_rel_dE"] <= 2 * m["max_rel_dE"] * (1 + 1e-9)


def test_versus_headline_is_the_median_over_checkpoints_of_each_checkpoints_median(capsys):
    """``--versus``'s headline line: per checkpoint the median over its systems of the learned rule's ratio to that
    family (max |dE/E| and band), then median [min, max] over checkpoints; recomputed here from the board."""
    board_dir = BOARD.parents[1] / "start_phase" / "shipped"
    board = json.loads((board_dir / "scoreboard.json").read_text())
    assert results.main([str(board_dir), "--versus", "recursive_blend_clip"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Learned / `recursive_blend_clip`"))
    for name, key in (("max |dE/E|", "ratios"), ("band", "ratios_band")):
        meds = [float(np.median([e[key]["equal_force_evals"]["recursive_blend_clip"] for e in systems.values()]))
                for systems in board["systems"].values()]
        assert len(meds) > 1 and max(meds) > min(meds)
        assert f"{name} {np.median(meds):.3g} [{min(meds):.3g}, {max(meds):.3g}]" in line


def test_summary_per_family_carries_position_and_band_beside_energy():
    board = json.loads((BOARD.parents[1] / "practitioner_radial" / "scoreboard.json").read_text())
    summ = results.summarize(results.systems_by_label(board))
    for label, systems in board["systems"].items():
        fam = summ["per_checkpoint"][label]["practitioner"]
        for comp, key in (("equal_force_evals", "ratios"), ("band_equal_force_evals", "ratios_band"),
                          ("trajectory_equal_force_evals", "ratios_trajectory")):
            vals = [e[key]["equal_force_evals"]["strongest"] for e in systems.values()
                    if e.get(key, {}).get("equal_force_evals", {}).get("strongest") is not None]
            assert len(vals) >= 10
            assert fam[comp]["strongest"] == approx({"median": float(np.median(vals)), "worst": float(np.max(vals))})
    assert summ["across_checkpoints"]["practitioner"]["band_equal_force_evals"]["strongest"]["median"] < 1.5


PRS_LEAN_N3 = BOARD.parents[1] / "standard_random3_prs_lean" / "scoreboard.json"


def test_judging_a_board_again_with_every_family_reproduces_its_verdicts():
    """aits.scoreboard.judge is the verdict score_system wrote: re-judged with all its families, a board made with
    today's code gives back its strongest families and every ratio unchanged."""
    board = json.loads(PRS_LEAN_N3.read_text())
    again = results.without(board, [])
    assert again == board and again is not board
    entry = next(iter(next(iter(board["systems"].values())).values()))
    assert "recursive_prs_lean_clip" in entry["ratios"]["equal_force_evals"]


def test_without_a_family_judges_against_the_best_of_the_others(capsys):
    """--without FAMILY: per system the strongest is the smallest max |dE/E| among the other classical families
    (computed here from the runs by hand), and the table prints those ratios; a family the board never ran is a
    one-line error."""
    board = json.loads(PRS_LEAN_N3.read_text())
    left = "recursive_prs_lean_clip"
    judged = results.without(board, [left])
    changed = 0
    for label, systems in board["systems"].items():
        for name, entry in systems.items():
            m = entry["methods"]
            others = {f: m[f]["max_rel_dE"] for f in results.CLASSICAL if f in m and f != left
                      and m[f]["max_rel_dE"] is not None and np.isfinite(m[f]["max_rel_dE"])}
            best = min(others, key=others.get)
            got = judged["systems"][label][name]
            assert got["strongest"] == best
            assert got["ratios"]["equal_force_evals"]["strongest"] == approx(m["learned"]["max_rel_dE"] / others[best],
                                                                          rel=1e-12)
            assert left not in got["ratios"]["equal_force_evals"]
            changed += entry["strongest"] == left
    assert changed > 0  # the family was the strongest somewhere: the verdicts really move
    assert results.main(["--without", left, str(PRS_LEAN_N3.parent)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"### {PRS_LEAN_N3.parent} (without {left})") and f"{left} ×" not in out
    assert results.main(["--without", left, str(BOARD.parent)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and left in err[0] and "scoreboard.json" in err[0]
