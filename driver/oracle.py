"""G4: the headroom table. Per system of an evaluation board, the oracle (aits/oracle.py: a member of the
learned family fitted to that system alone) beside the learned rule, both against the strongest classical rule.

    python driver/oracle.py BOARD_DIR [--out DIR] [--systems a,b] [--eta0 0.01] [--modulation 3] [--clip 1.2] [--timescale nn|blend]
                            [--fit-evals 20000] [--fits DIR[,DIR]]

Reads ``BOARD_DIR/scoreboard.json`` (driver/evaluate.py, any number of checkpoints; the practitioner, quick
or standard suite it names). Per system: fits the oracle once, at the first checkpoint's force evaluations,
then runs it over the whole duration at each checkpoint's learned force evaluations and divides its
max |dE/E| by that checkpoint's strongest classical rule's (the board's, at the same evaluations).
Writes ``DIR/oracle.json`` and ``DIR/oracle.md`` (default DIR: BOARD_DIR) and prints the table.

Beside the ratios, each system's *factor spread*: how much the oracle and each learned rule reshape the
steps (95th / 5th percentile of g = h / tau over the states of the system's fit run; 1 is the classical
rule). The checkpoints' files must be where the board says. ``--shape-only`` adds the spreads to an
oracle.json already written, without fitting again; ``--fits`` reuses the oracles fitted for another board of
the same suite and family (the fit does not depend on the checkpoints), so a new board's table costs one classical
run and the checkpoints' oracle runs per system.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from aits import oracle as O
from aits.scoreboard import ratio, suite_systems
from aits.steprules import BLENDS, RECURSION_CLIP
from driver.evaluate import fmt, systems_by_label


def _median(values):
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    return float(np.median(vals)) if vals else None


def board_systems(board: dict) -> dict:
    """{name: System} of the suite a board names, built for its first checkpoint (N, D, softening)."""
    ckpt0 = board["checkpoints"][0]
    return {s.name: s for s in suite_systems(board["suite"], ckpt0.get("N", 2), ckpt0.get("D", 2),
                                             ckpt0.get("softening", 0.0))}


def headroom(board: dict, names: list[str] | None, eta0: float, modulation: float, clip: float,
             max_runs: int = 80, log=print, timescale: str = "nn", fit_evals: int = O.FIT_EVALS,
             fits: dict | None = None) -> dict:
    """The headroom table of ``board``. ``fits``: {system: an oracle.json entry's ``fit``, with its ``fit_evals``
    and ``from``} of oracles fitted before (:func:`stored_fits`): those are rebuilt, not fitted again."""
    fits = fits or {}
    by_label = systems_by_label(board)
    labels = list(by_label)
    first = by_label[labels[0]]
    systems = board_systems(board)
    out: dict = {"suite": board["suite"], "checkpoints": labels, "eta0": eta0, "modulation": modulation,
                 "clip": clip, "timescale": timescale, "fit_evals": fit_evals, "systems": {}}
    for name in (names or list(first)):
        if name not in systems or name not in first:
            raise SystemExit(f"oracle: error: system {name!r} is not on this board (it has {', '.join(first)})")
        sys_ = systems[name]
        start = time.perf_counter()
        target0 = first[name]["methods"]["learned"]["force_evals"]
        if name in fits:
            h = O.stored_oracle(sys_, fits[name], eta0, modulation, clip, timescale, fits[name]["fit_evals"])[1]
            fit_entry = dict(fits[name])
        else:
            fit, h = O.fit_oracle(sys_, eta0, modulation, clip, fit_evals=fit_evals, target_evals=target0,
                                   max_runs=max_runs, timescale=timescale)
            fit_entry = {"features": fit.keep, "w": fit.w, "fit_duration": fit.fit_duration,
                         "duration": sys_.duration, "J_fit_over_classical": fit.j_oracle / fit.j_classical
                         if fit.j_classical and math.isfinite(fit.j_classical) else None, "fit_runs": fit.fit_runs,
                         "fit_evals": fit_evals}
        rows = []
        for label in labels:
            entry = by_label[label][name]
            target = entry["methods"]["learned"]["force_evals"]
            run = O.run_at_evals(h, sys_, target, clip)
            strong = entry.get("strongest")
            s_err = entry["methods"][strong]["max_rel_dE"] if strong else None
            l_err = entry["methods"]["learned"]["max_rel_dE"]
            o_err = run.metrics.get("max_rel_dE") if run.metrics["status"] == "ok" else math.inf
            rows.append({"checkpoint": label, "target_evals": target, "oracle_evals": run.metrics["force_evals"],
                         "oracle_max_rel_dE": o_err, "oracle_status": run.metrics["status"],
                         "learned_max_rel_dE": l_err, "strongest": strong, "strongest_max_rel_dE": s_err,
                         "oracle_over_strongest": ratio(o_err, s_err), "learned_over_strongest": ratio(l_err, s_err),
                         "learned_over_oracle": ratio(l_err, o_err)})
        res = {"fit": fit_entry, "rows": rows, "seconds": time.perf_counter() - start}
        for key in ("oracle_over_strongest", "learned_over_strongest", "learned_over_oracle"):
            res[key] = _median([r[key] for r in rows])
        out["systems"][name] = res
        log(f"{name:24s} oracle/strongest {fmt(res['oracle_over_strongest'])}  learned/strongest "
            f"{fmt(res['learned_over_strongest'])}  learned/oracle {fmt(res['learned_over_oracle'])}  "
            f"(fit J {fmt(res['fit']['J_fit_over_classical'])} of the classical recursion, "
            + (f"fit from {fit_entry['from']}, " if "from" in fit_entry else f"{fit_entry['fit_runs']} runs, ")
            + f"{res['seconds']:.0f} s)")
    out["median"] = {key: _median([s[key] for s in out["systems"].values()])
                     for key in ("oracle_over_strongest", "learned_over_strongest", "learned_over_oracle")}
    add_shapes(out, board, log)
    return out


def stored_fits(dirs: list[str], eta0: float, modulation: float, clip: float, timescale: str) -> dict:
    """{system: fit} from the oracle.json in each folder of ``dirs`` (a later folder's fit of a system replaces an
    earlier one's), each fit with its ``fit_evals`` and ``from`` (the file). Raises ValueError, naming the file,
    where one is unreadable or its family (eta0, modulation, clip, timescale) is not the one asked for."""
    fits = {}
    for d in dirs:
        path = Path(d) / "oracle.json"
        try:
            res = json.loads(path.read_text())
            family = (res["eta0"], res["modulation"], res["clip"], res.get("timescale", "nn"))
            systems = res["systems"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a readable oracle.json ({exc})") from None
        if family != (eta0, modulation, clip, timescale):
            raise ValueError(f"{path}: its oracles are of eta0, modulation, clip, timescale = {family}, not "
                             f"{(eta0, modulation, clip, timescale)}")
        for name, entry in systems.items():
            fits[name] = {**entry["fit"], "fit_evals": entry["fit"].get("fit_evals", res.get("fit_evals", O.FIT_EVALS)),
                          "from": str(path)}
    return fits


def learned_factors(board: dict, eps: float) -> list:
    """Each checkpoint's learned factor g(features) (range check as evaluated), for a system of softening
    ``eps``, taking the features as the oracle family computes them (feature 1 the cosine, converted to the
    rule's own ``features.radial_feature``); None for a checkpoint whose file is gone or whose rule has no factor."""
    from aits import load_checkpoint
    from aits.policy import FactorStep, learned_methods

    out = []
    for c in board["checkpoints"]:
        path = Path(c.get("path", ""))
        if not path.is_file():
            out.append(None)
            continue
        h = getattr(learned_methods(load_checkpoint(path), eps=eps, range_check=c.get("range_check", True))["learned"],
                    "h", None)
        out.append(_own_features(h.mlp, h.radial) if isinstance(h, FactorStep) else None)
    return out


def _own_features(mlp, radial: str):
    """The factor ``mlp`` given the states' features as the oracle family computes them (feature 1 the cosine),
    converted to the rule's own ``radial`` feature first."""
    from aits.features import with_radial

    return lambda feats: mlp(with_radial(feats, radial))


def add_shapes(res: dict, board: dict, log=print) -> None:
    """Per system, how much the oracle and each learned rule reshape the steps over the same states
    (aits.oracle.shape_spreads: 95th / 5th percentile of the factor along the fit run): ``shape`` entries."""
    systems = board_systems(board)
    factors: dict = {}
    for name, s in res["systems"].items():
        sys_ = systems[name]
        if sys_.eps not in factors:
            factors[sys_.eps] = learned_factors(board, sys_.eps)
        shape = O.shape_spreads(sys_, s["fit"], res["eta0"], res["modulation"], res["clip"], factors[sys_.eps],
                                res.get("timescale", "nn"),
                                s["fit"].get("fit_evals", res.get("fit_evals", O.FIT_EVALS)))
        shape["learned_median"] = _median(shape["learned"])
        s["shape"] = shape
        log(f"{name:24s} factor spread (95th / 5th percentile over the fit run): oracle {fmt(shape['oracle'])}, "
            f"learned {', '.join(fmt(v) for v in shape['learned'])}")


def markdown(res: dict) -> str:
    lines = [f"Oracle (a linear member of the learned family, fitted per system; eta0 {res['eta0']:g}, "
             f"M {res['modulation']:g}, clip {res['clip']:g}, timescale {res.get('timescale', 'nn')}) on suite `{res['suite']}`, "
             f"{len(res['checkpoints'])} checkpoint(s): medians over checkpoints of max |ΔE/E| ratios at the "
             "learned run's force evaluations.", "",
             "| system | strongest | oracle / strongest | learned / strongest | learned / oracle | fit J / classical "
             "| factor spread: oracle | learned |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in res["systems"].items():
        fams = ", ".join(dict.fromkeys(r["strongest"] or "–" for r in s["rows"]))
        shape = s.get("shape") or {}
        lines.append(f"| {name} | {fams} | {fmt(s['oracle_over_strongest'])} | {fmt(s['learned_over_strongest'])} | "
                     f"{fmt(s['learned_over_oracle'])} | {fmt(s['fit']['J_fit_over_classical'])} | "
                     f"{fmt(shape.get('oracle'))} | {fmt(shape.get('learned_median'))} |")
    med = res["median"]
    shapes = [s.get("shape") or {} for s in res["systems"].values()]
    lines += [f"| **median** | | {fmt(med['oracle_over_strongest'])} | {fmt(med['learned_over_strongest'])} | "
              f"{fmt(med['learned_over_oracle'])} | | {fmt(_median([sh.get('oracle') for sh in shapes]))} | "
              f"{fmt(_median([sh.get('learned_median') for sh in shapes]))} |", "",
              "Factor spread: the 95th over the 5th percentile of the step factor g = h / tau over the states of the "
              "classical recursion's fit run (1: a constant factor, the classical rule); learned: median over "
              "checkpoints."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("board", metavar="BOARD_DIR")
    p.add_argument("--out", default=None, help="folder for oracle.json and oracle.md (default: BOARD_DIR)")
    p.add_argument("--systems", default=None, help="comma-separated system names (default: every system)")
    p.add_argument("--eta0", type=float, default=0.01, help="the family's classical eta (model.init_factor)")
    p.add_argument("--modulation", type=float, default=3.0, help="the bound M of the factor (model.max_modulation)")
    p.add_argument("--clip", type=float, default=RECURSION_CLIP, help="the recursion's clip (model.recursion_clip)")
    p.add_argument("--timescale", default="nn", choices=("nn", *BLENDS),
                   help="the family's timescale (features.timescale of the checkpoints)")
    p.add_argument("--max-runs", type=int, default=80, help="fit runs per system (Nelder-Mead evaluations)")
    p.add_argument("--fit-evals", type=int, default=O.FIT_EVALS,
                   help="force evaluations of the classical run the fit covers: the leading part of the duration it "
                        "reaches (default %(default)s); a system whose hard phase comes late needs its whole duration")
    p.add_argument("--fits", default=None, metavar="DIR[,DIR]",
                   help="reuse the oracles fitted in these folders' oracle.json (a later folder's replaces an "
                        "earlier one's) for the systems they hold: each costs one classical run instead of a fit; "
                        "the same family (--eta0, --modulation, --clip, --timescale) is required")
    p.add_argument("--shape-only", action="store_true",
                   help="no fitting: add the factor spreads to the oracle.json already in --out (or BOARD_DIR)")
    a = p.parse_args(argv)
    path = Path(a.board) / "scoreboard.json"
    if not path.is_file():
        p.error(f"{path}: no scoreboard.json (run driver/evaluate.py first)")
    if a.eta0 <= 0 or a.modulation <= 1 or a.clip <= 1 or a.max_runs < 1 or a.fit_evals < 1:
        p.error("--eta0 must be > 0, --modulation and --clip > 1, --max-runs and --fit-evals >= 1")
    try:
        board = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        p.error(f"{path}: not a readable scoreboard ({exc})")
    names = [s for s in a.systems.split(",") if s] if a.systems else None
    out = Path(a.out or a.board)
    if a.shape_only:
        stored = out / "oracle.json"
        try:
            res = json.loads(stored.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            p.error(f"{stored}: no readable oracle.json for --shape-only ({exc})")
        try:
            add_shapes(res, board)
        except (KeyError, ValueError) as exc:
            p.error(f"{stored}: does not match {path} ({exc})")
    else:
        try:
            fits = stored_fits([d for d in a.fits.split(",") if d], a.eta0, a.modulation, a.clip,
                               a.timescale) if a.fits else {}
        except ValueError as exc:
            p.error(str(exc))
        res = headroom(board, names, a.eta0, a.modulation, a.clip, a.max_runs, timescale=a.timescale,
                       fit_evals=a.fit_evals, fits=fits)
    out.mkdir(parents=True, exist_ok=True)
    (out / "oracle.json").write_text(json.dumps(res, indent=1, default=float))
    md = markdown(res)
    (out / "oracle.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
