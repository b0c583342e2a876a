"""One self-contained HTML page per evaluation: ``DIR/index.html`` beside ``scoreboard.json``.

The page holds the headline table (per system: the learned rule's energy and trajectory error, the
strongest classical rule and the ratios learned / strongest at equal force evaluations and at equal
wall time, statuses), the cost plot, each system's plot, movie and method table, the checkpoints'
configs and training distributions, and the command that made it. Relative links only, inline CSS,
no scripts. Every number of the headline table carries its exact JSON value in ``data-value``
(``repr`` of the float, ``null`` for none) beside the rounded text, so tests and scripts can read it
back.
"""
from __future__ import annotations

import html
import json
import math
import os
import shlex
import tempfile
from pathlib import Path

from aits.scoreboard import CLASSICAL, ratio, strongest

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em 0; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin-top: 1.4em; } .sub { color: #555; margin: 0 0 .8em 0; }
table { border-collapse: collapse; font-size: .82em; margin: .4em 0 1em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; } th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.status { max-width: 14em; } td.win { background: #dff3df; } td.lose { background: #f8dede; } td.bad { color: #b00; font-weight: bold; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .8em; }
img, video { max-width: 100%; border: 1px solid #ddd; } .media { display: flex; flex-wrap: wrap; gap: 1em; }
.note { color: #555; font-size: .85em; }
"""


# ---------------------------------------------------------------- reading the board
COMPARISONS = (("equal_force_evals", "evals"), ("equal_wall_time", "wall"))


def _value(x):
    """A ratio entry as a number: a float, or a dict's ``ratio``/``value`` (None otherwise)."""
    if isinstance(x, dict):
        x = x.get("ratio", x.get("value"))
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _position_error(met: dict | None):
    """(error, kind): the relative position error if the board has it (``position_error_rel`` or
    ``final_position_error_rel``), else the absolute ``final_position_error``."""
    if not met:
        return None, None
    for key in ("position_error_rel", "final_position_error_rel"):
        if key in met:
            return met[key], "rel"
    return met.get("final_position_error"), "abs"


def _sub(met: dict | None, comp: str) -> dict | None:
    """A baseline's run at equal evaluations (the method itself) or at equal wall time (its sub-run)."""
    if not met:
        return None
    return met if comp == "equal_force_evals" else met.get("equal_wall_time")


def strongest_of(entry: dict, comp: str) -> str | None:
    """The strongest classical family of a comparison: the board's ``strongest`` (equal evaluations)
    or ``strongest_wall`` (equal wall time, else ``strongest``); for a board without them, chosen
    from ``entry['methods']`` as the scoreboard chooses (:func:`aits.scoreboard.strongest`)."""
    if comp == "equal_force_evals" and "strongest" in entry:
        return entry["strongest"]
    if comp == "equal_wall_time" and ("strongest_wall" in entry or "strongest" in entry):
        return entry.get("strongest_wall", entry.get("strongest"))
    methods = entry.get("methods", {})
    return strongest(methods, [f for f in CLASSICAL if f in methods], None if comp == "equal_force_evals" else comp)


def _ratio(table: dict | None, fam: str | None, learned, baseline):
    """table['strongest'], else table[fam] (the board's values, even null ones), else learned / baseline."""
    table = table or {}
    for key in ("strongest", fam):
        if key is not None and key in table:
            return _value(table[key])
    return ratio(learned, baseline)


def headline(entry: dict) -> dict:
    """The headline row of one system's scoreboard entry.

    Per comparison (``evals``: equal force evaluations, ``wall``: equal wall time): the strongest
    classical family (:func:`strongest_of`), the ratio learned / strongest of max |dE/E| (the
    board's ``ratios[comparison]['strongest']``, else its ratio for that family) and of the position
    error (``ratios_trajectory``, else computed from the methods). Returns the cells by field name
    (numbers as in the board, None where missing).
    """
    methods = entry.get("methods", {})
    learned = "learned" if "learned" in methods else next(iter(methods))
    lm = methods[learned]
    lp, kind = _position_error(lm)
    row = {"learned": learned, "learned_max_rel_dE": lm.get("max_rel_dE"), "learned_force_evals": lm.get("force_evals"),
           "learned_status": lm.get("status"), "learned_position_error": lp, "position_error_kind": kind}
    for comp, key in COMPARISONS:
        fam = strongest_of(entry, comp)
        bm = _sub(methods.get(fam), comp) if fam else None
        row[f"strongest_{key}"] = fam
        row[f"strongest_{key}_max_rel_dE"] = bm.get("max_rel_dE") if bm else None
        row[f"strongest_{key}_status"] = bm.get("status") if bm else None
        same = fam is not None  # a ratio only against a named family
        row[f"ratio_{key}"] = (_ratio(entry.get("ratios", {}).get(comp), fam, lm.get("max_rel_dE"),
                                      row[f"strongest_{key}_max_rel_dE"]) if same else None)
        traj = entry.get("ratios_trajectory")
        row[f"ratio_position_{key}"] = (_ratio(traj.get(comp) if isinstance(traj, dict) else None, fam, lp,
                                               _position_error(bm)[0]) if same else None)
    row["not_ok"] = sorted(f"{k}: {m.get('status')}" for k, m in methods.items() if m.get("status") not in ("ok", None))
    row["trajectory"] = entry.get("trajectory") or {}
    return row


def systems_by_label(board: dict) -> dict[str, dict]:
    """{checkpoint label: {system: entry}} for one or several checkpoints."""
    if board.get("systems_keyed_by_checkpoint"):
        return board["systems"]
    return {board["checkpoints"][0]["label"]: board["systems"]}


# ---------------------------------------------------------------- HTML pieces
def esc(x) -> str:
    return html.escape(str(x), quote=True)


def show(x) -> str:
    """A number for the eye: integers whole, floats to 3 significant digits."""
    if x is None:
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return esc(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def num(field: str, x, cls: str = "", note: str = "") -> str:
    """A table cell holding a number, its exact value in ``data-value`` (JSON: repr, or null), and an
    optional note after it."""
    value = "null" if x is None else json.dumps(x)
    note = f' <span class="note">{esc(note)}</span>' if note else ""
    return f'<td class="num {cls}" data-field="{esc(field)}" data-value="{esc(value)}">{show(x)}{note}</td>'


def _ratio_cls(r) -> str:
    return "" if r is None else "win" if r < 1 else "lose"


def headline_table(label: str, systems: dict) -> str:
    head = ("<tr><th rowspan=2>system</th><th rowspan=2>learned max |ΔE/E|</th><th rowspan=2>force evals</th>"
            "<th colspan=3>equal force evaluations</th><th colspan=3>equal wall time</th>"
            "<th colspan=3>trajectory</th><th rowspan=2>status: learned / strongest</th></tr>"
            "<tr><th>strongest classical</th><th>its max |ΔE/E|</th><th>learned / strongest</th>"
            "<th>strongest classical</th><th>its max |ΔE/E|</th><th>learned / strongest</th>"
            "<th>learned position error</th><th>/ strongest, equal evals</th><th>/ strongest, equal wall</th></tr>")
    rows = []
    for name, entry in systems.items():
        h = headline(entry)
        tr = h["trajectory"]
        notes = [] if h["position_error_kind"] == "rel" else ["absolute, vs IAS15"]
        if tr.get("horizon") is not None and entry.get("duration") and tr["horizon"] < entry["duration"]:
            notes.append(f"at t = {show(tr['horizon'])}")
        if tr.get("chaotic"):
            notes.append("chaotic")
        if tr.get("ranked") is False:
            notes.append("not ranked")
        kind = ", ".join(notes)
        statuses = [h["learned_status"] or "–", h["strongest_evals_status"] or "–"]
        if h["strongest_wall"] != h["strongest_evals"] and h["strongest_wall"]:
            statuses.append(f"{h['strongest_wall']}: {h['strongest_wall_status']}")
        grouped: dict[str, list[str]] = {}  # the other methods that are not ok, by status
        for item in h["not_ok"]:
            meth, status = item.split(": ", 1)
            if meth not in ("learned", h["strongest_evals"], h["strongest_wall"]):
                grouped.setdefault(status, []).append(meth)
        others = [f"{status}: {', '.join(meths)}" for status, meths in grouped.items()]
        bad = h["learned_status"] not in ("ok", None)
        cells = [f'<td><a href="#{esc(anchor(label, name))}">{esc(name)}</a></td>',
                 num("learned_max_rel_dE", h["learned_max_rel_dE"]), num("learned_force_evals", h["learned_force_evals"])]
        for k in ("evals", "wall"):
            cells += [f'<td data-field="strongest_{k}">{esc(h["strongest_" + k] or "–")}</td>',
                      num(f"strongest_{k}_max_rel_dE", h[f"strongest_{k}_max_rel_dE"]),
                      num(f"ratio_{k}", h[f"ratio_{k}"], _ratio_cls(h[f"ratio_{k}"]))]
        cells += [num("learned_position_error", h["learned_position_error"], "",
                      kind if h["learned_position_error"] is not None else ""),
                  num("ratio_position_evals", h["ratio_position_evals"], _ratio_cls(h["ratio_position_evals"])),
                  num("ratio_position_wall", h["ratio_position_wall"], _ratio_cls(h["ratio_position_wall"])),
                  f'<td class="status {"bad" if bad else ""}">{esc(" / ".join(statuses))}'
                  + (f'<br><span class="note">{esc("; ".join(others))}</span>' if others else "") + "</td>"]
        rows.append(f'<tr data-checkpoint="{esc(label)}" data-system="{esc(name)}">{"".join(cells)}</tr>')
    sizes = sorted({e.get("trajectory", {}).get("size_name") for e in systems.values()} - {None})
    foot = ("<p class=\"note\">Position error: max over the bodies of |x − x<sub>IAS15</sub>| at the reference's "
            "horizon" + (f", over the system's size ({esc(', '.join(sizes))})" if sizes else "") + ". Status: of the "
            "learned run and the strongest runs, then the other methods that are not ok.</p>")
    return f'<table class="headline" data-checkpoint="{esc(label)}">{head}{"".join(rows)}</table>{foot}'


def verdict(systems: dict) -> str:
    """One line: on how many systems the learned rule beats the strongest classical one."""
    hs = [headline(e) for e in systems.values()]
    parts = []
    for key, what in (("ratio_evals", "equal force evaluations"), ("ratio_wall", "equal wall time")):
        rs = [h[key] for h in hs if h[key] is not None]
        parts.append(f"{sum(r < 1 for r in rs)} of {len(rs)} systems at {what}")
    return ("Learned rule more accurate (max |ΔE/E|) than the strongest classical rule on " + " and ".join(parts)
            + ". Ratio = learned / classical: below 1 (green) the learned rule is better.")


def anchor(label: str, name: str) -> str:
    return "sys-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{label}-{name}")


def methods_table(entry: dict) -> str:
    cols = ("force_evals", "steps", "wall_time_s", "max_rel_dE", "final_rel_dE", "drift_slope",
            "final_position_error", "final_position_error_rel", "status")
    cols = [c for c in cols if any(c in m for m in entry["methods"].values())]
    head = "<tr><th>method</th>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "<th>equal wall time: max |ΔE/E| (evals)</th></tr>"
    rows = []
    for meth, m in entry["methods"].items():
        cells = "".join(num(c, m.get(c)) if c != "status" else f"<td>{esc(m.get(c))}</td>" for c in cols)
        w = m.get("equal_wall_time")
        wall = f"{show(w.get('max_rel_dE'))} ({show(w.get('force_evals'))})" if isinstance(w, dict) else "–"
        rows.append(f"<tr><td>{esc(meth)}</td>{cells}<td class=\"num\">{wall}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def media(out_dir: Path, name: str, movies: dict) -> str:
    """The system's plot and movie, for the files that exist."""
    parts = []
    if (out_dir / f"{name}.png").is_file():
        parts.append(f'<img src="{esc(name)}.png" alt="|ΔE/E| and dt against time, {esc(name)}" width="640">')
    movie = movies.get(name)
    if movie and (out_dir / movie).is_file():
        if movie.endswith(".mp4"):
            parts.append(f'<video src="{esc(movie)}" controls loop muted width="640">'
                         f'<a href="{esc(movie)}">{esc(movie)}</a></video>')
        else:
            parts.append(f'<img src="{esc(movie)}" alt="orbit movie, {esc(name)}" width="640">')
    return f'<div class="media">{"".join(parts)}</div>' if parts else ""


def checkpoint_section(board: dict) -> str:
    out = ["<h2>Checkpoints</h2>"]
    for ck in board.get("checkpoints", []):
        facts = {k: ck.get(k) for k in ("epoch", "run_name", "seed", "N", "D", "softening", "n_steps", "model_output")
                 if ck.get(k) is not None}
        out.append(f"<h3>{esc(ck.get('label'))}</h3><p class=\"note\">{esc(ck.get('path', ''))}</p>"
                   "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts.items())
                   + "</table>")
        if ck.get("config_summary"):
            out.append(f"<p>Config</p><pre>{esc(ck['config_summary'])}</pre>")
        dist = ck.get("training_distribution")
        if dist is not None:
            text = dist if isinstance(dist, str) else json.dumps(dist, indent=1)
            out.append(f"<p>Training distribution</p><pre>{esc(text)}</pre>")
    if board.get("training_distribution") is not None:
        out.append(f"<p>Training distribution</p><pre>{esc(json.dumps(board['training_distribution'], indent=1))}</pre>")
    return "".join(out)


def summary_section(board: dict) -> str:
    per = board.get("summary", {}).get("per_checkpoint", {})
    if not per:
        return ""
    out = ["<h2>Summary per family</h2><p class=\"note\">Median (worst) ratio learned / classical over the "
           "family's systems.</p>"]
    for label, fams in per.items():
        seen = dict.fromkeys(b for comps in fams.values() for bs in comps.values() for b in bs)
        bases = sorted(seen, key=lambda b: b != "strongest")  # stable: the board's order after "strongest"
        rows = [f"<tr><td>{esc(fam)}</td><td>{esc(comp)}</td>"
                + "".join(f"<td class=\"num\">{show(bs[b]['median'])} ({show(bs[b]['worst'])})</td>" if b in bs
                          else "<td>–</td>" for b in bases) + "</tr>"
                for fam, comps in fams.items() for comp, bs in comps.items()]
        out.append(f"<h3>{esc(label)}</h3><table><tr><th>family</th><th>comparison</th>"
                   + "".join(f"<th>{esc(b)}</th>" for b in bases) + "</tr>" + "".join(rows) + "</table>")
    return "".join(out)


def find_movies(out_dir: Path, names) -> dict[str, str]:
    """{system: movie file name} for the ``<system>.mp4`` / ``.gif`` files in ``out_dir``."""
    found = {}
    for name in names:
        for ext in ("mp4", "gif"):
            if (out_dir / f"{name}.{ext}").is_file():
                found[name] = f"{name}.{ext}"
                break
    return found


# ---------------------------------------------------------------- the page
def render_report(out_dir, board: dict, command, movies: dict[str, str] | None = None) -> str:
    """The page's HTML (see :func:`write_report`)."""
    out_dir = Path(out_dir)
    by_label = systems_by_label(board)
    first = next(iter(by_label))
    names = list(by_label[first])
    movies = find_movies(out_dir, names) if movies is None else movies
    cmd = command if isinstance(command, str) else shlex.join(str(c) for c in command)
    files = [f for f in ("scoreboard.json", "scoreboard.md") if (out_dir / f).is_file()]
    wall = board.get("wall_time_s")
    parts = [f"<h1>Scoreboard: suite {esc(board.get('suite'))}</h1>",
             f"<p class=\"sub\">{len(board.get('checkpoints', []))} checkpoint(s), {len(names)} systems"
             + (f", evaluated in {wall:.0f} s" if isinstance(wall, (int, float)) else "") + ". "
             + " · ".join(f'<a href="{esc(f)}">{esc(f)}</a>' for f in files) + "</p>"]
    for label, systems in by_label.items():
        parts += [f"<h2>{esc(label)}</h2>", f"<p>{esc(verdict(systems))}</p>", headline_table(label, systems)]
    if (out_dir / "cost.png").is_file():
        parts.append('<h2>Accuracy against cost</h2><img src="cost.png" alt="max |ΔE/E| against force evaluations">')
    parts.append(summary_section(board))
    parts.append(f"<h2>Systems</h2><p class=\"note\">Plots and movies of {esc(first)}; baselines at equal force "
                 "evaluations. Movies: the learned rule beside the strongest classical rule.</p>")
    for label, systems in by_label.items():
        for name, entry in systems.items():
            params = {k: entry.get(k) for k in ("kind", "family", "N", "D", "softening", "duration")}
            parts.append(f'<h3 id="{esc(anchor(label, name))}">{esc(name)}'
                         + (f" <span class=\"note\">({esc(label)})</span>" if len(by_label) > 1 else "") + "</h3>"
                         + f"<p class=\"note\">{esc(json.dumps(params))}; {esc(json.dumps(entry.get('params', {})))}</p>"
                         + (media(out_dir, name, movies) if label == first else "") + methods_table(entry))
    parts.append(checkpoint_section(board))
    parts.append(f"<h2>Command</h2><pre>{esc(cmd)}</pre>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Scoreboard {esc(board.get('suite'))}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(p for p in parts if p) + "\n</body></html>\n")


def write_report(out_dir, board: dict, command, movies: dict[str, str] | None = None) -> Path:
    """Write ``out_dir/index.html`` for the scoreboard ``board`` (as in ``scoreboard.json``).

    Parameters
    ----------
    out_dir : str or Path
        The evaluation's folder; the page links the plots (``cost.png``, ``<system>.png``), movies and
        ``scoreboard.json``/``.md`` found there, relatively.
    board : dict
        The scoreboard.
    command : str or list of str
        The command that made the evaluation (a list is shell-quoted).
    movies : dict, optional
        {system: movie file name in ``out_dir``}; None: the ``<system>.mp4`` or ``.gif`` found there.

    Returns
    -------
    Path
        The page written (atomically).
    """
    out_dir = Path(out_dir)
    page = render_report(out_dir, board, command, movies).encode()
    fd, tmp = tempfile.mkstemp(prefix=".index.html.", suffix=".tmp", dir=out_dir)
    with os.fdopen(fd, "wb") as fh:
        fh.write(page)
    os.replace(tmp, out_dir / "index.html")
    return out_dir / "index.html"
