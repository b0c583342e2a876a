"""How much weight on the PRS timescale? The clipped classical recursion on tau^(1 - w) tau_prs^w, before training.

    python examples/timescale_weights.py random4      # the standard suite's random N = 4 systems of seeds 10-39, ~7 min
    python examples/timescale_weights.py practitioner # eight practitioner systems, ~4 min
    python examples/timescale_weights.py random4 --eccentric   # also the eccentric weight (below), ~10 min

The exploration behind ``features.timescale: prs_lean`` (docs/DESIGN.md §2.3b, docs/RESULTS.md "Leaning to the PRS
timescale"). Per system, every family runs at the same force evaluations (within 2 %, ``aits.scoreboard.match_evals``):
those of the classical ``recursive_blend_clip`` at h = 0.01, the level a bounded factor model starts from. Printed:
each family's max |dE/E| over the best of the families run, per system, then the median, the largest and how many
end above 2. w = 1/2 is ``recursive_blend_clip``, 3/4 ``recursive_prs_lean_clip``; 2/3 and, with ``--eccentric``, an
eccentric weight (3/4 falling to 0 as the osculating eccentricity of the pair that sets tau goes from 0.9 to 1) are
registered here alone. The best of the families run is over the families printed, so ``--eccentric`` can move the
others' figures where it wins.
No IAS15, no learned rule: a measurement of the classical rules a learned factor would modulate, on two workers.
"""
from __future__ import annotations

import math
import statistics
import sys
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aits import integrators as I  # noqa: E402
from aits import scoreboard as SB  # noqa: E402
from aits import steprules as S  # noqa: E402

PRACTITIONER = ("kepler_e0.99", "kepler_e0.999_3d", "planet_hd80606b", "pythagorean", "hierarchical_triple",
                "cluster_N8_unsoftened", "figure_eight", "kozai_lidov_i75")


def two_thirds(x, v, a, m, eps=0.0, r2=None):
    """tau^(1/3) tau_prs^(2/3) (soft, as ``prs_lean``): a weight between the blend's and prs_lean's."""
    return S.blend_timescale(x, v, a, m, eps, soft=True, r2=r2, w=2.0 / 3.0)


def pair_eccentricity(x, v, a, m) -> float:
    """The osculating eccentricity of body i* (the one that sets tau) and its nearest neighbour, from r, u and
    mu = m_i + m_j alone: e^2 = 1 + 2 E h^2 / mu^2, E = u^2 / 2 - mu / r, h = |r x u| (even in v)."""
    _, tau_i, jnn = S.nn_pairs_small(x.tolist(), a.tolist())  # the pairs the timescale itself takes
    i = min(range(len(tau_i)), key=tau_i.__getitem__)
    j = jnn[i]
    r, u, mu = x[j] - x[i], v[j] - v[i], m[i] + m[j]
    rr = math.sqrt(float(r @ r))
    energy = 0.5 * float(u @ u) - mu / rr
    h2 = float(r @ r) * float(u @ u) - float(r @ u) ** 2
    return math.sqrt(max(1.0 + 2.0 * energy * h2 / (mu * mu), 0.0))


def eccentric_lean(x, v, a, m, eps=0.0, r2=None):
    """prs_lean's weight 3/4 on tau_prs, falling linearly to 0 (tau itself) as the pair's eccentricity goes from 0.9
    to 1: the near-radial bound pairs on tau, everything else leaning to the PRS timescale."""
    w = 0.75 * min(max((1.0 - pair_eccentricity(x, v, a, m)) / 0.1, 0.0), 1.0)
    return S.blend_timescale(x, v, a, m, eps, soft=True, r2=r2, w=w)


def register() -> None:
    """The 2/3 and the eccentric families, in this process (each worker registers its own)."""
    for name, fn in (("prs_two_thirds", two_thirds), ("eccentric_lean", eccentric_lean)):
        S.TIMESCALES[name] = I.TIMESCALES[name] = fn
        SB.FAMILY_FORMS[f"recursive_{name}_clip"] = ("recursive", name)
        SB.FAMILY_CLIP[f"recursive_{name}_clip"] = S.RECURSION_CLIP


def families(which: str, eccentric: bool = False) -> tuple[str, ...]:
    lean = ("recursive_blend_clip", "recursive_prs_two_thirds_clip", "recursive_prs_lean_clip",
            *(("recursive_eccentric_lean_clip",) if eccentric else ()))
    if which == "random4":
        return ("adaptive_prs", "recursive_prs_clip", *lean)
    return ("recursive_clip", "adaptive_prs", "recursive_prs_clip", *lean)


def one(task) -> tuple[str, dict]:
    register()
    name, system, fams = task
    start = SB.run_method(SB.make_baseline("recursive_blend_clip", 0.01, system.eps), system, 1, 5_000_000)
    target = start.metrics["force_evals"]
    return name, {f: SB.match_evals(f, system, target, 1)[0].metrics["max_rel_dE"] for f in fams}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    eccentric = "--eccentric" in argv
    argv = [a for a in argv if a != "--eccentric"]
    which = argv[0] if argv else "random4"
    if which == "random4":
        systems = [(f"random_N4_s{s}", SB.random_system(4, 3, s, 10, 0.0)) for s in range(10, 40)]
    elif which == "practitioner":
        known = {s.name: s for s in SB.practitioner_systems()}
        systems = [(n, known[n]) for n in PRACTITIONER]
    else:
        print(f"timescale_weights: error: {which!r}: expected random4 or practitioner", file=sys.stderr)
        return 2
    fams = families(which, eccentric)
    rows = {}
    with Pool(2) as pool:
        for name, errs in pool.imap_unordered(one, [(n, s, fams) for n, s in systems]):
            best = min(errs.values())
            rows[name] = {f: e / best for f, e in errs.items()}
            print(f"{name:<24}" + "  ".join(f"{f} {r:6.2f}" for f, r in rows[name].items()), flush=True)
    for f in fams:
        r = [row[f] for row in rows.values()]
        print(f"{f:<32} median {statistics.median(r):5.2f}  largest {max(r):6.2f}  above 2: {sum(x > 2 for x in r)} "
              f"of {len(r)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
