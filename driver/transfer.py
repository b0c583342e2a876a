"""Does an oracle's shape carry to systems it was not fitted on? (issue 19, G4; aits/oracle.py)

    python driver/transfer.py --checkpoint CKPT --fit 8 --held-out 8 [--periods 10] [--families binary triple
        planets few_body mixture] [--seed 0] [--workers 2] --out DIR

A per-system oracle (driver/oracle.py) is fitted to one system and judged there. This fits *one* linear member
of the learned family (g = eta0 * M^tanh(w . phi), the checkpoint's eta0, M, recursion clip and timescale) to
``--fit`` systems of a family at once -- Nelder-Mead on the mean of log(J / J_classical), J = max |dE/E| x
evaluations^2 over each system's leading ~20000 evaluations -- and runs it on ``--held-out`` other draws of the
same family. ``mixture`` pools the checkpoint's whole training mixture. In-sample against held-out J ratios
say how much of the family's gain is a shape that systems share and how much fits one realisation only.
``--suite practitioner`` then runs every fitted member on each system of that suite too (the same J over its
leading ~20000 evaluations, against the classical recursion): do the mixture's shapes carry to the problems
users run? Writes DIR/transfer.json and DIR/transfer.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aits import oracle as O
from aits.checkpoint import CheckpointError, load_checkpoint
from aits.config import Config
from aits.distill import mixture_systems
from aits.families import FAMILIES
from driver.backends import map_tasks, single_threaded

HELD_OUT_STREAM = 10_000  # held-out draws use seed + this: never the fit draws of another small seed


_leading_task = single_threaded(O.leading_part)
_j_task = single_threaded(O.system_j)


def draws(cfg: Config, family: str, seed: int, count: int, periods: float) -> list:
    """``count`` systems of ``family`` (``mixture``: the config's own mixture) for ``periods`` restart units."""
    s = cfg.system if family == "mixture" else replace(cfg.system, mixture={family: 1.0})
    return mixture_systems(s, seed, count, periods)


def summary(ratios: list[float]) -> dict:
    r = np.asarray([x for x in ratios if math.isfinite(x)], dtype=float)
    return {"median": float(np.median(r)) if len(r) else None, "min": float(r.min()) if len(r) else None,
            "max": float(r.max()) if len(r) else None, "worse": int(np.sum(r > 1.0)),
            "failed": int(len(ratios) - len(r)), "count": len(ratios)}


def run_family(cfg: Config, family: str, rule: tuple, a, mapper, log=print) -> dict:
    eta0, modulation, clip, timescale = rule
    start = time.perf_counter()
    cut = []
    for seed, count in ((a.seed, a.fit), (a.seed + HELD_OUT_STREAM, a.held_out)):
        systems = draws(cfg, family, seed, count, a.periods)
        parts = mapper(_leading_task, [(s, eta0, modulation, clip, timescale) for s in systems])
        cut.append([p for p in parts if p is not None])
    fit_set, held = cut
    if not fit_set:
        raise ValueError(f"transfer: {family}: no fit system's classical run ended ok")
    fit = O.fit_pooled(fit_set, eta0, modulation, clip, timescale, a.max_runs,
                       mapper=lambda calls: mapper(_j_task, calls))
    args = (fit.keep, fit.mean, fit.std, eta0, modulation, clip, timescale)
    zero = np.zeros(len(fit.keep))
    js = mapper(_j_task, [(w, *args, s) for s in held for w in (fit.w, zero)])  # one map: both rules, every draw
    held_ratios = [_ratio(b, c) for b, c in zip(js[::2], js[1::2])]
    rec = {"family": family, "fit": {"systems": fit.systems, "ratios": fit.ratios(), **summary(fit.ratios())},
           "held_out": {"systems": [s.name for s in held], "ratios": held_ratios, **summary(held_ratios)},
           "keep": fit.keep, "w": fit.w, "mean": fit.mean, "std": fit.std, "fit_runs": fit.fit_runs,
           "left_out": a.fit + a.held_out - len(fit_set) - len(held), "seconds": time.perf_counter() - start}
    log(f"{family:9s} fit {_cell(rec['fit'])}   held out {_cell(rec['held_out'])}   "
        f"{fit.fit_runs} fit runs, {rec['seconds']:.0f} s")
    return rec


def run_suite(suite: str, cfg: Config, families: list[dict], rule: tuple, mapper, log=print) -> dict:
    """{system: {family: J ratio of that family's fitted member over the classical recursion}} on ``suite``."""
    from aits.scoreboard import suite_systems

    s = cfg.system
    systems = suite_systems(suite, s.num_particles, s.dim, s.softening, s.mass)
    parts = mapper(_leading_task, [(x, *rule) for x in systems])
    runs = [p_ for p_ in parts if p_ is not None]
    calls = []
    for part in runs:  # per system: the classical recursion (no weights), then each family's member
        calls.append((np.zeros(0), [], [], [], *rule, part))
        calls += [(f["w"], f["keep"], f["mean"], f["std"], *rule, part) for f in families]
    js = iter(mapper(_j_task, calls))
    out: dict = {}
    for x, part in zip(systems, parts):
        if part is None:
            out[x.name] = None  # the classical run did not end ok: no J to compare with
            continue
        j0 = next(js)
        out[x.name] = {f["family"]: _ratio(next(js), j0) for f in families}
        log(f"{x.name:24s} " + "  ".join(f"{k} {v:.2f}" for k, v in out[x.name].items()))
    return out


def _ratio(j: float, j0: float) -> float:
    return j / j0 if math.isfinite(j) and math.isfinite(j0) and j0 > 0 else math.inf


def _cell(s: dict) -> str:
    if s["median"] is None:
        return "-"
    return (f"{s['median']:.2f} [{s['min']:.2f}, {s['max']:.2f}], {s['worse']} of {s['count']} worse"
            + (f", {s['failed']} not ok" if s["failed"] else ""))


def markdown(res: dict) -> str:
    lines = [f"One linear member of the family per row (eta0 {res['eta0']}, M {res['modulation']}, clip "
             f"{res['clip']}, timescale {res['timescale']}), fitted to {res['fit']} draws at once and run on "
             f"{res['held_out']} other draws ({res['periods']} restart units each, seed {res['seed']}): J / J of "
             "the classical recursion, J = max |dE/E| x evaluations^2 over the leading ~20000 evaluations; "
             "median [min, max] over systems.", "",
             "| family | in sample | held out |", "|---|---|---|"]
    for r in res["families"]:
        lines.append(f"| {r['family']} | {_cell(r['fit'])} | {_cell(r['held_out'])} |")
    if res.get("suite_ratios"):
        fams = [r["family"] for r in res["families"]]
        lines += ["", f"Each member on the `{res['suite']}` suite (the same J ratio over each system's leading "
                  "~20000 evaluations):", "", "| system | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
        for name, row in res["suite_ratios"].items():
            cells = ["classical run not ok"] * len(fams) if row is None else [f"{row[f]:.2f}" for f in fams]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        med = {f: np.median([row[f] for row in res["suite_ratios"].values() if row is not None]) for f in fams}
        lines.append("| **median** | " + " | ".join(f"{med[f]:.2f}" for f in fams) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a recursive bounded-factor checkpoint (the family, the mixture)")
    p.add_argument("--fit", type=int, default=8, help="draws per family the member is fitted to")
    p.add_argument("--held-out", type=int, default=8, help="other draws per family it is run on")
    p.add_argument("--periods", type=float, default=10.0, help="each system's duration (restart units)")
    p.add_argument("--families", nargs="+", default=["binary", "triple", "planets", "few_body", "mixture"],
                   help=f"families to fit ({', '.join(FAMILIES)}; mixture: the checkpoint's mixture)")
    p.add_argument("--seed", type=int, default=0, help="the draws (held out: seed + %d)" % HELD_OUT_STREAM)
    p.add_argument("--max-runs", type=int, default=60, help="Nelder-Mead evaluations per family")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel Ray tasks; 1: here")
    p.add_argument("--suite", choices=["practitioner", "practitioner_quick", "quick", "standard"],
                   help="then run every fitted member on this suite's systems")
    p.add_argument("--members", metavar="JSON", help="take the members from an earlier transfer.json (no fits)")
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    if a.fit < 1 or a.held_out < 1 or a.max_runs < 1 or a.workers < 1:
        p.error("--fit, --held-out, --max-runs and --workers must be >= 1")
    if not (a.periods > 0 and math.isfinite(a.periods)):
        p.error(f"--periods must be > 0, got {a.periods}")
    bad = [f for f in a.families if f != "mixture" and f not in FAMILIES]
    if bad:
        p.error(f"--families: unknown {', '.join(bad)} (known: {', '.join(FAMILIES)}, mixture)")
    try:
        ckpt = load_checkpoint(a.checkpoint)
    except CheckpointError as exc:
        p.error(str(exc))
    cfg = Config.from_dict(dict(ckpt["config"]))
    mc = cfg.model
    if mc.output != "factor" or mc.max_modulation is None or not mc.recursive:
        p.error(f"{a.checkpoint}: needs a recursive bounded-factor rule (model.output factor, max_modulation, "
                f"recursive)")
    if "mixture" in a.families and not getattr(cfg.system, "mixture", None):
        p.error(f"{a.checkpoint}: --families mixture: the checkpoint's config has no system.mixture")
    rule = (float(mc.init_factor), float(mc.max_modulation), float(mc.step_clip), cfg.features.timescale)
    if a.members:
        if not a.suite:
            p.error("--members needs --suite (the members are already fitted: only a suite is left to run)")
        try:
            earlier = json.loads(Path(a.members).read_text())
            stored = (earlier["eta0"], earlier["modulation"], earlier["clip"], earlier["timescale"])
            assert isinstance(earlier["families"], list) and earlier["families"]
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            p.error(f"{a.members}: not a transfer.json with fitted families ({type(exc).__name__}: {exc})")
        if stored != rule:
            p.error(f"{a.members}: fitted for (eta0, M, clip, timescale) {stored}, the checkpoint's rule is {rule}")
    out = Path(a.out)
    res = {"checkpoint": str(a.checkpoint), "eta0": rule[0], "modulation": rule[1], "clip": rule[2],
           "timescale": rule[3], "fit": a.fit, "held_out": a.held_out, "periods": a.periods, "seed": a.seed,
           "max_runs": a.max_runs, "families": []}
    owns = a.workers > 1
    if owns:
        import ray

        ray.init(address="local", num_cpus=a.workers, include_dashboard=False, logging_level="WARNING")
    try:
        def mapper(fn, calls):
            return map_tasks(fn, calls, a.workers)

        def write():
            out.mkdir(parents=True, exist_ok=True)  # written after every step: a stopped run keeps what it has
            (out / "transfer.json").write_text(json.dumps(res, indent=1, default=float))
            (out / "transfer.md").write_text(markdown(res))

        if a.members:
            res = earlier
        for fam in [] if a.members else a.families:
            try:
                res["families"].append(run_family(cfg, fam, rule, a, mapper))
            except ValueError as exc:
                p.error(str(exc))
            write()
        if a.suite:
            res.update(suite=a.suite, suite_ratios=run_suite(a.suite, cfg, res["families"], rule, mapper))
            write()
    finally:
        if owns:
            ray.shutdown()
    print(f"transfer: {len(res['families'])} families -> {out / 'transfer.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
