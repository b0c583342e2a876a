"""A quick screen of checkpoints before the boards: on a few systems that tell training variants apart, the
learned rule's max |dE/E| over the strongest of the classical rules that win there, at equal force evaluations.

    python driver/screen.py CKPT [CKPT ...] [--systems pythagorean,kepler_e0.9_a1_10P] [--random 4:10-29]
                            [--workers 2] [--json FILE]
    python driver/screen.py --table FILE        # a --json file's table again, without running anything

Minutes where driver/evaluate.py's boards take an hour: no IAS15 reference, no wall-time match, and per system
only the classical families that are the strongest there on the boards (docs/RESULTS.md), so a ratio here can
only be lower than the board's learned / strongest. Use it to choose what to put on the boards, not as a result.
Systems: the Pythagorean problem, the unsoftened N = 8 cluster, HD 80606 b, the softened Plummer spheres
(N = 16, 64), the near-radial Kepler orbits e = 0.99 and 0.999, the outer solar system, the hierarchical triple and
the Kozai-Lidov triple (the practitioner suite; Kozai-Lidov alone takes about a minute), Kepler orbits e = 0.9 and
0.98 over 10 periods, four random N = 3 systems of the standard suite (seeds 0, 3, 4, 7) and three random N = 4
systems (seeds 3, 5, 8): the hardest for the learned rules so far. ``position``: the learned run's position error
against IAS15 at the reference's horizon (as on the boards) over the smallest of the screened families' at equal
evaluations (blank where the reference's horizon is too short to rank), the drift that decides chaotic systems
(docs/RESULTS.md, "Is it the rule or the trajectory?"). ``held``: the share of the learned run's steps that the range
check held at the classical rule (w < 0.5, aits.ranges.RangeTally); 1.00 says the system lies outside what the rule
was trained on.

``--random N:A-B`` adds the random N-body systems of seeds A to B, drawn as the standard suite draws its own (3-D,
unsoftened, 10 crossing times) and judged as its seeds are: a tail over fresh chaotic systems, where one system
(`random_N4_s8`) can end far from the strongest rule by where its trajectory drifts (docs/RESULTS.md). For the
random systems of each N screened (the default ones too), summary lines give the median, the largest value and how
many systems end above 2 and above 5, for the learned rule and, beside it, for each screened classical family alone
(its error over the strongest family's): the tail a single fixed classical rule has on the same draws.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aits import CheckpointError, load_checkpoint  # noqa: E402
from aits import scoreboard as SB  # noqa: E402
from aits.policy import learned_methods  # noqa: E402
from aits.ranges import range_report, range_tally  # noqa: E402
from driver.backends import map_tasks  # noqa: E402

FEW_BODY = ("adaptive_prs", "recursive_prs", "recursive_prs_clip", "recursive_blend_clip", "recursive_prs_lean_clip")


def random_screen_system(n: int, seed: int) -> SB.System:
    """The standard suite's random N-body system of this seed (3-D, unsoftened, 10 crossing times)."""
    return SB.random_system(n, 3, seed, 10, 0.0)


def parse_random(spec: str) -> tuple[int, range]:
    """``N:A-B`` (or ``N:A``) -> (N, seeds A..B); ValueError naming what is wrong."""
    try:
        n_text, seeds = spec.split(":")
        first, _, last = seeds.partition("-")
        n, a, b = int(n_text), int(first), int(last or first)
    except ValueError:
        raise ValueError(f"--random {spec!r}: expected N:A-B, e.g. 4:10-29") from None
    if not 2 < n <= 64 or a < 0 or b < a:
        raise ValueError(f"--random {spec!r}: N must be 3..64 and the seeds 0 <= A <= B")
    return n, range(a, b + 1)


def screen_systems(extra: tuple[tuple[int, int], ...] = ()) -> dict[str, tuple[SB.System, tuple[str, ...]]]:
    """name -> (system, the classical families it is judged against); ``extra``: (N, seed) of more random
    systems (``--random``)."""
    practitioner = {s.name: s for s in SB.practitioner_systems()}
    out = {"pythagorean": (practitioner["pythagorean"], ("adaptive_prs", "recursive_blend_clip",
                                                         "recursive_prs_lean_clip")),
           "cluster_N8_unsoftened": (practitioner["cluster_N8_unsoftened"], ("adaptive_prs", "recursive_blend_clip",
                                                                             "recursive_prs_lean_clip")),
           "planet_hd80606b": (practitioner["planet_hd80606b"], ("recursive_clip", "recursive_adaptive")),
           "plummer_N16_eps0.05": (practitioner["plummer_N16_eps0.05"], ("recursive_adaptive", "recursive_clip",
                                                                         "recursive_soft_blend_clip")),
           "plummer_N64_eps0.05": (practitioner["plummer_N64_eps0.05"], ("recursive_clip", "recursive_adaptive",
                                                                         "recursive_soft_blend_clip"))}
    # the recommended rules' worst practitioner rows since the radial feature (issue 19, G1): the near-radial
    # Kepler orbits started at pericentre, and the triples whose families the apsis starts move
    for name, fams in (("kepler_e0.99", ("recursive_adaptive",)), ("kepler_e0.999_3d", ("recursive_adaptive",)),
                       ("outer_solar_system", ("recursive_prs",)),
                       ("hierarchical_triple", ("recursive_prs", "adaptive_prs")),
                       ("kozai_lidov_i75", ("recursive_blend_clip", "recursive_prs_lean_clip"))):
        out[name] = (practitioner[name], fams)
    for e in (0.9, 0.98):
        s = SB.kepler_system(e, 1.0, 10, "kepler_scale", 3)
        out[s.name] = (s, ("recursive_adaptive",))
    for n, seeds in ((3, (0, 3, 4, 7)), (4, (3, 5, 8))):
        for seed in seeds:
            s = random_screen_system(n, seed)
            out[s.name] = (s, FEW_BODY)
    for n, seed in extra:
        s = random_screen_system(n, seed)
        out[s.name] = (s, FEW_BODY)
    return out


def screen_one(path: str, name: str, extra: tuple = ()) -> dict:
    """One checkpoint on one screen system: {family: learned / family} at equal evaluations, and the status."""
    import torch

    torch.set_num_threads(1)
    system, families = screen_systems(extra)[name]
    learned = learned_methods(load_checkpoint(path), eps=system.eps)["learned"]
    run = SB.run_method(learned, system, 1, 2_000_000)
    tally = range_tally(learned)
    ref = SB.ias15(system)  # the position reference, as on the boards (None where REBOUND cannot run it)
    ranked = SB.is_ranked(ref, system)
    ratios, positions = {}, {}
    for family in families:
        classical, _ = SB.match_evals(family, system, run.metrics["force_evals"], 1)
        ratios[family] = SB.ratio(run.metrics["max_rel_dE"], classical.metrics["max_rel_dE"])
        if ranked:
            positions[family] = SB.ratio(SB.position_error(run, ref), SB.position_error(classical, ref))
    known_ratios = [v for v in ratios.values() if v is not None]  # None: a run with no finite error
    return {"status": run.metrics["status"], "force_evals": run.metrics["force_evals"], "ratios": ratios,
            "learned_over_strongest": max(known_ratios) if known_ratios else None,
            "position_ratios": positions, "range_check": None if tally is None else range_report(tally)}


def _num(v) -> str:
    return "  n/a" if v is None else f"{v:5.2f}"


def _tail(values) -> str:
    return (f"median {statistics.median(values):5.2f}  largest {max(values):.2f}, above 2: "
            f"{sum(v > 2 for v in values)}, above 5: {sum(v > 5 for v in values)} of {len(values)}")


def print_table(table: dict[str, dict]) -> None:
    """The screen's table, one block per checkpoint. Where random systems were screened, a summary per N: the
    learned rule's tail and every screened classical family's own tail, its error over the strongest family's at
    the learned run's evaluations, (learned / strongest) / (learned / family), the same for a single fixed rule.
    A run and ``--table`` of its file print the same text (the summary is read from the rows alone)."""
    for c, rows in table.items():
        names = list(rows)
        width = max(len(n) for n in names)
        print(c)
        for n in names:
            r = rows[n]
            held = "" if r["range_check"] is None else f"held {r['range_check']['held_share']:4.2f}  "
            pos = [v for v in r["position_ratios"].values() if v is not None]
            print(f"  {n:<{width}}  {_num(r['learned_over_strongest'])}  {r['status']:<12} {held}"
                  f"position {_num(max(pos) if pos else None)}  "
                  + "  ".join(f"{f} {_num(v)}" for f, v in r["ratios"].items()))
        for n_bodies in (3, 4):
            picked = [rows[n] for n in names if n.startswith(f"random_N{n_bodies}_")]
            few = [r["learned_over_strongest"] for r in picked if r["learned_over_strongest"] is not None]
            if not few:
                continue
            print(f"  random N = {n_bodies}, learned / strongest: {_tail(few)}")
            for fam in dict.fromkeys(f for r in picked for f in r["ratios"]):
                own = [r["learned_over_strongest"] / r["ratios"][fam] for r in picked
                       if r["learned_over_strongest"] is not None and r["ratios"].get(fam)]
                if own:
                    print(f"  random N = {n_bodies}, {fam} / strongest: {_tail(own)}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="*", metavar="CKPT")
    p.add_argument("--systems", default=None, help="comma-separated names (default: every screen system)")
    p.add_argument("--random", action="append", default=[], metavar="N:A-B",
                   help="add the random N-body systems of seeds A..B (repeatable), e.g. 4:10-29")
    p.add_argument("--workers", type=int, default=2, help="parallel Ray tasks (1: in this process)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here")
    p.add_argument("--table", default=None, metavar="FILE",
                   help="print the table (and tails) of a screen's --json file again; runs nothing")
    a = p.parse_args(argv)
    if a.table is not None:
        try:
            table = json.loads(Path(a.table).read_text())
            if not isinstance(table, dict) or not table:
                raise ValueError("no checkpoint in it")
            print_table(table)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            print(f"screen: error: --table {a.table}: not a screen's --json file ({exc})", file=sys.stderr)
            return 2
        return 0
    if not a.checkpoints:
        p.error("give checkpoints to screen, or --table FILE")
    try:
        extra = tuple((n, seed) for spec in a.random for n, seeds in [parse_random(spec)] for seed in seeds)
    except ValueError as exc:
        p.error(str(exc))
    known = screen_systems(extra)
    if a.systems is not None:
        names = [s.strip() for s in a.systems.split(",") if s.strip()]
    else:  # every screen system, or with --random only the random ones
        names = [] if a.random else list(known)
    added = [random_screen_system(n, seed).name for n, seed in extra]  # the random systems join the named ones
    names += [n for n in dict.fromkeys(added) if n not in names]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        p.error(f"--systems: unknown {', '.join(unknown) or '(none given)'}; systems: {', '.join(known)}")
    if a.workers < 1:
        p.error("--workers must be >= 1")
    try:
        for path in a.checkpoints:
            load_checkpoint(path)
    except CheckpointError as exc:
        print(f"screen: error: {exc}", file=sys.stderr)
        return 2
    calls = [(c, n, extra) for c in a.checkpoints for n in names]
    finished = []

    def progress(i, r):  # a long tail screen says how far it is, on stderr
        finished.append(i)
        print(f"screen: {len(finished)}/{len(calls)} {calls[i][0]} {calls[i][1]} {_num(r['learned_over_strongest'])}",
              file=sys.stderr, flush=True)

    results = map_tasks(screen_one, calls, a.workers, on_done=progress)
    table: dict[str, dict] = {}
    for (c, n, _), r in zip(calls, results):
        table.setdefault(c, {})[n] = r
    print_table(table)
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
