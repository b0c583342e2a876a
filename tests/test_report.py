"""The evaluation's HTML report (driver/report.py) and movies from the scoreboard CLI (driver/evaluate.py)."""
from __future__ import annotations

import copy
import json
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import imageio.v2 as imageio
import pytest

from aits import scoreboard as S
from driver import evaluate, report

from helpers import FILMED

ROOT = Path(__file__).resolve().parents[1]


class Page(HTMLParser):
    """Links, element ids, the command block and the headline cells {(system, field): (data-value, text)}."""

    def __init__(self):
        super().__init__()
        self.links, self.ids, self.cells, self.pre = [], set(), {}, []
        self._system, self._cell, self._in_pre = None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [a[k] for k in ("href", "src") if k in a]
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "tr" and "data-system" in a:
            self._system = a["data-system"]
        if tag == "td" and self._system and "data-field" in a:
            self._cell = [(self._system, a["data-field"]), a.get("data-value"), ""]
        self._in_pre = self._in_pre or tag == "pre"

    def handle_data(self, data):
        if self._cell:
            self._cell[2] += data
        if self._in_pre:
            self.pre.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._cell:
            key, value, text = self._cell
            self.cells[key] = (value, text.strip())
            self._cell = None
        if tag == "tr":
            self._system = None
        if tag == "pre":
            self._in_pre = False


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def expected_row(entry: dict) -> dict:
    """The headline numbers as the board states them (the names score_system documents)."""
    lm, strong, wall = entry["methods"]["learned"], entry["strongest"], entry["strongest_wall"]
    r, rt = entry["ratios"], entry["ratios_trajectory"]
    return {"learned_max_rel_dE": lm["max_rel_dE"], "learned_force_evals": lm["force_evals"],
            "strongest_evals_max_rel_dE": entry["methods"][strong]["max_rel_dE"],
            "strongest_wall_max_rel_dE": entry["methods"][wall]["equal_wall_time"]["max_rel_dE"],
            "ratio_evals": r["equal_force_evals"]["strongest"], "ratio_wall": r["equal_wall_time"]["strongest"],
            "learned_position_error": lm["position_error_rel"],
            "ratio_position_evals": rt["equal_force_evals"]["strongest"],
            "ratio_position_wall": rt["equal_wall_time"]["strongest"]}


def check_cells(page: Page, systems: dict, expected) -> None:
    for name, entry in systems.items():
        for field, value in expected(entry).items():
            data, text = page.cells[(name, field)]
            assert json.loads(data) == value, (name, field)  # exactly the board's number
            if value is None:
                assert text == "–"
            else:  # and the text shows it to 3 significant digits
                assert float(text.split()[0]) == pytest.approx(value, rel=5e-3), (name, field, text)


def test_report_links_exist_and_its_numbers_are_the_scoreboards(quick_board):
    out, board = quick_board["out"], quick_board["board"]
    page = parse((out / "index.html").read_text())
    assert {"cost.png", "scoreboard.json", f"{FILMED}.png", f"{FILMED}.mp4"} <= set(page.links)
    for link in page.links:
        url = urlparse(link)
        assert not url.scheme and not url.netloc and not link.startswith("/"), link  # relative, no network
        if link.startswith("#"):
            assert link[1:] in page.ids, link
        else:
            assert (out / unquote(url.path)).is_file(), link
    assert "<script" not in (out / "index.html").read_text()
    systems = board["systems"]
    assert {name for name, _ in page.cells} == set(systems)
    check_cells(page, systems, expected_row)
    for name, entry in systems.items():
        assert page.cells[(name, "strongest_evals")][1] == entry["strongest"]
        assert page.cells[(name, "strongest_wall")][1] == entry["strongest_wall"]
    assert board["checkpoints"][0]["config_summary"] in "".join(page.pre)
    assert "driver/evaluate.py " + " ".join(quick_board["argv"]) in "".join(page.pre)


def test_movie_of_the_evaluation_decodes(quick_board):
    out = quick_board["out"]
    lines = [ln for ln in quick_board["stdout"].splitlines() if ln.startswith("Movie ")]
    assert len(lines) == 1 and lines[0].startswith(f"Movie {FILMED}: mp4, 8 frames,"), quick_board["stdout"][-800:]
    assert f"Report: {out.resolve() / 'index.html'}" in quick_board["stdout"]
    reader = imageio.get_reader(out / f"{FILMED}.mp4")
    assert reader.count_frames() == 8 and reader.get_data(7).shape == (288, 512, 3)
    reader.close()
    assert not list(out.glob("*.gif")) and not list(out.glob(".*"))


def test_report_without_the_strongest_keys_falls_back_to_the_methods(quick_board):
    """An older board (no ``strongest``, no trajectory ratios, absolute position errors only)."""
    board = copy.deepcopy(quick_board["board"])
    for entry in board["systems"].values():
        for key in ("strongest", "strongest_wall", "ratios_trajectory"):
            entry.pop(key)
        for comp in entry["ratios"].values():
            comp.pop("strongest")
        for met in entry["methods"].values():
            met.pop("position_error_rel", None)
    page = parse(report.render_report(quick_board["out"], board, "evaluate"))

    def expected(entry):
        fams = [f for f in S.CLASSICAL if f in entry["methods"]]
        best = min(fams, key=lambda f: entry["methods"][f]["max_rel_dE"])
        best_wall = min(fams, key=lambda f: entry["methods"][f]["equal_wall_time"]["max_rel_dE"])
        lm = entry["methods"]["learned"]
        return {"ratio_evals": entry["ratios"]["equal_force_evals"][best],
                "ratio_wall": entry["ratios"]["equal_wall_time"][best_wall],
                "learned_position_error": lm["final_position_error"],
                "ratio_position_evals": S.ratio(lm["final_position_error"], entry["methods"][best]["final_position_error"])}

    check_cells(page, board["systems"], expected)
    original = quick_board["board"]["systems"]
    for name in board["systems"]:  # the same choice as the board's own
        assert page.cells[(name, "strongest_evals")][1] == original[name]["strongest"]


@pytest.mark.parametrize("flags, word", [(["--movie-frames", "1"], "--movie-frames"),
                                         (["--movie-system", "no_such_system"], "no_such_system")])
def test_bad_movie_flags_exit_2_writing_nothing(quick_board, tmp_path, capsys, flags, word):
    out = tmp_path / "o"
    assert evaluate.main(["--checkpoint", quick_board["ckpt"], "--out", str(out), "--workers", "1", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]
    assert not out.exists()
