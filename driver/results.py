"""The tables of docs/RESULTS.md from evaluation folders: headline and per system over checkpoints.

    python driver/results.py BOARD_DIR [BOARD_DIR ...]

Reads each ``BOARD_DIR/scoreboard.json`` (written by driver/evaluate.py), recomputes its summary with
the current ``aits.scoreboard.summarize`` (so older boards get today's tables) and prints markdown:
the headline over checkpoints (median [min, max]) and the per-system table, with the energy band beside
max |dE/E| (``--versus FAMILY``: also the ratios to that classical family, per system and as each
checkpoint's median over systems). Prints nothing else and writes nothing.

    python driver/results.py --without FAMILY BOARD_DIR [BOARD_DIR ...]

judges the boards again with ``strongest`` over the classical families other than FAMILY (repeatable): a
board made after a family joined ``aits.scoreboard.CLASSICAL`` set beside an older one on the same terms.

    python driver/results.py --profile BOARD_DIR [BOARD_DIR ...]

pools the boards' systems (per checkpoint label) and prints, for the learned rule and every classical
family, its max |dE/E| over each system's strongest at equal force evaluations: median and worst over the
systems, and the share within 1.25 (issue 19's G1 bound). It says whether any single rule is near the
per-system best everywhere, or only the choice per system is.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np

from aits.scoreboard import CLASSICAL, judge, per_system_summary, rule_profile, spread, summarize
from driver.evaluate import fmt, systems_by_label


def spread_cell(st: dict) -> str:
    """``median [min, max]`` of an :func:`aits.scoreboard.spread`; the one value alone when n = 1."""
    return fmt(st["median"]) if st["n"] == 1 else f"{fmt(st['median'])} [{fmt(st['min'])}, {fmt(st['max'])}]"


def tables(board: dict, versus: str | None = None) -> str:
    """Markdown for one board: headline over checkpoints and the per-system table (``versus``: a classical
    family whose energy and band ratios get their own columns)."""
    by_ckpt = systems_by_label(board)
    summ = summarize(by_ckpt)
    heads = summ["headline"]
    lines = [f"Suite `{board['suite']}`, {len(by_ckpt)} checkpoint(s), {board['wall_time_s']:.0f} s.", "",
             "| checkpoint | energy, equal evals (median) | worst | energy, equal wall | position, equal evals | "
             "position, equal wall | energy band, equal evals | learned not ok |", "|---|---|---|---|---|---|---|---|"]
    for label, h in heads.items():
        lines.append(f"| {label} | {fmt(h['energy_equal_evals'])} | {fmt(h['energy_worst_equal_evals'])} | "
                     f"{fmt(h['energy_equal_wall'])} | {fmt(h['trajectory_equal_evals'])} | "
                     f"{fmt(h['trajectory_equal_wall'])} | {fmt(h.get('energy_band_equal_evals'))} | "
                     f"{h['not_ok']} of {h['systems']} |")
    lines.append("")
    def cell(st, comp, base="strongest"):  # median [min, max] over checkpoints; one value alone
        v = st.get(comp, {}).get(base)
        return "–" if v is None else spread_cell(v)

    extra = f" energy / {versus} | band / {versus} |" if versus else ""
    lines += ["| system | learned evals | strongest | energy / strongest, equal evals | equal wall | "
              "position / strongest, equal evals | equal wall | energy band / smallest band, equal evals |"
              + extra + " learned status |",
              "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if versus else "")]
    per = per_system_summary(by_ckpt)
    for name, st in per.items():
        fams = ", ".join(f"{f} ×{st['strongest'].count(f)}" for f in dict.fromkeys(st["strongest"]) if f)
        stats = ", ".join(f"{x} ×{st['learned_status'].count(x)}" for x in dict.fromkeys(st["learned_status"]))
        ev = sorted(st["learned_evals"])
        evals = f"{ev[len(ev) // 2]}" + (f" [{ev[0]}, {ev[-1]}]" if len(ev) > 1 else "")
        lines.append(f"| {name} | {evals} | {fams} | {cell(st, 'equal_force_evals')} | {cell(st, 'equal_wall_time')} | "
                     f"{cell(st, 'trajectory_equal_force_evals')} | {cell(st, 'trajectory_equal_wall_time')} | "
                     f"{cell(st, 'band_equal_force_evals')} | "
                     + (f"{cell(st, 'equal_force_evals', versus)} | {cell(st, 'band_equal_force_evals', versus)} | "
                        if versus else "") + f"{stats} |")
    fam_counts: dict[str, int] = {}
    for st in per.values():
        for f in st["strongest"]:
            if f:
                fam_counts[f] = fam_counts.get(f, 0) + 1
    lines += ["", "Strongest classical family (system × checkpoint): "
              + ", ".join(f"{f} {n}" for f, n in sorted(fam_counts.items(), key=lambda kv: -kv[1])) + "."]
    across = summ.get("headline_across_checkpoints")
    if across:
        lines += ["", "Over checkpoints, median [min, max] of each checkpoint's median: " + "; ".join(
            f"{k} {fmt(v['median'])} [{fmt(v['min'])}, {fmt(v['max'])}]" for k, v in across.items()) + "."]
    if versus:
        vs = versus_headline(by_ckpt, versus)
        lines += ["", f"Learned / `{versus}` at equal force evaluations, each checkpoint's median over its "
                      "systems, median [min, max] over checkpoints: " + "; ".join(
                          f"{k} {v['median']:.3g} [{v['min']:.3g}, {v['max']:.3g}]" for k, v in vs.items()) + "."]
    return "\n".join(lines) + "\n"


def without(board: dict, left_out: list[str]) -> dict:
    """A copy of ``board`` judged again (:func:`aits.scoreboard.judge`) with the classical families ``left_out``
    dropped from every system's comparisons: ``strongest`` and every ratio as if they had not been run. Raises
    ValueError when a family is on none of the board's systems."""
    out = copy.deepcopy(board)
    seen = set()
    for label, systems in out["systems"].items():
        for entry in systems.values():
            fams = [f for f in entry["ratios"]["equal_force_evals"] if f != "strongest"]
            seen.update(f for f in left_out if f in fams)
            kept = [f for f in fams if f not in left_out]
            judge(entry, kept, "learned", all("equal_wall_time" in entry["methods"][f] for f in kept))
    missing = [f for f in left_out if f not in seen]
    if missing:
        raise ValueError(f"no {', '.join(missing)} runs to leave out (--without)")
    return out


def versus_headline(by_ckpt: dict, versus: str) -> dict:
    """{'max |dE/E|': spread, 'band': spread}: per checkpoint the median over its systems of the learned rule's
    ratio to ``versus`` (runs where either failed count as missing), then the spread over checkpoints."""
    out = {}
    for name, key in (("max |dE/E|", "ratios"), ("band", "ratios_band")):
        meds = []
        for systems in by_ckpt.values():
            vals = [e.get(key, {}).get("equal_force_evals", {}).get(versus) for e in systems.values()]
            vals = [v for v in vals if v is not None]
            if vals:
                meds.append(float(np.median(vals)))
        if meds:
            out[name] = spread(meds)
    return out


def profile_table(boards: list[dict]) -> str:
    """Markdown: every rule over the systems of all ``boards`` pooled per checkpoint label (a system in two
    boards, as the hierarchical triple of the practitioner and the N = 3 standard suites, counts once)."""
    pooled: dict[str, dict] = {}
    for board in boards:
        for label, systems in systems_by_label(board).items():
            pooled.setdefault(label, {}).update(systems)
    prof = rule_profile(pooled)
    n = next(iter(prof.values()))["systems"] if prof else 0
    lines = [f"{len(pooled)} checkpoint(s), {n} systems each; max |ΔE/E| over the per-system strongest at equal "
             "force evaluations, median [min, max] over checkpoints.", "",
             "| rule | median over systems | worst system | share of systems within 1.25 |", "|---|---|---|---|"]
    order = sorted(prof, key=lambda r: (r != "learned", prof[r]["worst"]["median"], prof[r]["median"]["median"]))
    for rule in order:
        st = prof[rule]
        share = st["within"]
        lines.append(f"| {rule} | {spread_cell(st['median'])} | {spread_cell(st['worst'])} | "
                     f"{share['median']:.0%}" + ("" if share["n"] == 1 else f" [{share['min']:.0%}, {share['max']:.0%}]")
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="results", description=__doc__.split("\n\n")[0])
    p.add_argument("boards", nargs="+", metavar="BOARD_DIR")
    p.add_argument("--profile", action="store_true",
                   help="one table over all boards: each rule against the per-system strongest")
    p.add_argument("--versus", metavar="FAMILY", choices=CLASSICAL,
                   help="also the learned rule's energy and band ratios to this classical family")
    p.add_argument("--without", metavar="FAMILY", choices=CLASSICAL, action="append", default=[],
                   help="judge again with strongest over the other classical families (repeatable)")
    args = p.parse_args(argv)
    boards = []
    for d in args.boards:
        path = Path(d) / "scoreboard.json"
        try:
            boards.append(json.loads(path.read_text()))
            if args.without:
                boards[-1] = without(boards[-1], args.without)
        except (OSError, ValueError) as exc:
            print(f"results: error: {path}: {exc}", file=sys.stderr)
            return 2
    if args.profile:
        print(profile_table(boards))
        return 0
    for d, board in zip(args.boards, boards):
        print(f"### {d}" + (f" (without {', '.join(args.without)})" if args.without else "") + "\n")
        print(tables(board, args.versus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
