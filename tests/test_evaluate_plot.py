"""driver/evaluate.py's per-system plot: the bodies' x-y paths of the learned run and the best classical
baseline beside |dE/E| and dt against time (what driver/simulate.py's plot showed)."""
from __future__ import annotations

import numpy as np
import pytest

from aits import NormScales, build_payload
from aits import integrators as I
from aits import scoreboard as S
from aits.physics import kepler_ic
from aits.policy import learned_methods
from driver import evaluate

from helpers import factor_cfg, perturbed_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def series() -> dict:
    """Downsampled runs (as score_system keeps them) of a learned rule and two classical ones, e = 0.8, one period."""
    cfg = factor_cfg(symmetric_iterations=0)
    ckpt = build_payload(1, perturbed_model(cfg).state_dict(), None, cfg, NormScales().to_dict())
    m, x, v, period = kepler_ic(0.8, 1.0)
    methods = {"learned": learned_methods(ckpt)["learned"], "fixed": I.FixedStep(period / 400),
               "adaptive": I.Adaptive(0.02)}
    out = {}
    for name, method in methods.items():
        run = I.integrate(method, m, x, v, period)
        assert run.metrics["status"] == "ok"
        out[name] = S.downsample(run, m=m)
    assert max(out["adaptive"]["rel_dE"]) < max(out["fixed"]["rel_dE"])  # adaptive: the better baseline
    return out


def figures(monkeypatch, series, strongest=None, keyed=False) -> dict:
    """{file name: (axes, PNG bytes)} that plot_files draws for one system ``kepler``."""
    drawn = {}
    real_png = evaluate._png

    def keep(fig, plt):
        drawn[len(drawn)] = fig.axes
        return real_png(fig, plt)

    monkeypatch.setattr(evaluate, "_png", keep)
    entry = {"methods": {}, **({"strongest": strongest} if strongest else {})}
    systems = {"ck": {"kepler": entry}} if keyed else {"kepler": entry}
    board = {"systems": systems, "systems_keyed_by_checkpoint": keyed}
    pts = {"learned": [(100, 1e-3)], "fixed": [(100, 1e-2), (200, 3e-3)]}
    files = evaluate.plot_files({"ck": {"kepler": {"series": series, "cost": pts}}}, board)
    assert set(files) == {"kepler.png", "cost.png"} and all(b[:8] == PNG_MAGIC for b in files.values())
    return {"kepler.png": (drawn[0], files["kepler.png"]), "cost.png": (drawn[1], files["cost.png"])}


def orbit_lines(ax) -> dict:
    """{label: [(x, y) of each body's path]} of the orbit panel's path lines (markers left out)."""
    out, current = {}, None
    for line in ax.get_lines():
        if line.get_linestyle() == "None":
            continue
        label = line.get_label()
        current = label if not label.startswith("_") else current
        out.setdefault(current, []).append((line.get_xdata(), line.get_ydata()))
    return out


@pytest.mark.parametrize("strongest,keyed,expect", [(None, False, "adaptive"), ("fixed", True, "fixed")])
def test_paths_of_learned_and_best_baseline_beside_errors(monkeypatch, series, strongest, keyed, expect):
    """Without a named strongest the baseline of lowest max |dE/E| is drawn; with one, that one."""
    axes, png = figures(monkeypatch, series, strongest, keyed)["kepler.png"]
    assert len(axes) == 3
    orbit, err, dt = axes
    assert orbit.get_xlabel() == "x" and orbit.get_ylabel() == "y"
    paths = orbit_lines(orbit)
    why = "strongest at equal evaluations" if strongest else "lowest max |ΔE/E|"
    assert list(paths) == ["learned", f"{expect} ({why})"]
    for label, lines in paths.items():
        x = np.asarray(series[label.split(" (")[0]]["x"])
        assert len(lines) == x.shape[1] == 2  # one path per body
        for i, (px, py) in enumerate(lines):
            np.testing.assert_array_equal(px, x[:, i, 0])
            np.testing.assert_array_equal(py, x[:, i, 1])
    # every method's |dE/E| and dt against time
    assert [ln.get_label() for ln in err.get_lines()] == list(series)
    for ln, meth in zip(dt.get_lines(), series):
        np.testing.assert_array_equal(ln.get_xdata(), series[meth]["t"])
        np.testing.assert_array_equal(ln.get_ydata(), series[meth]["dt"])
    assert err.get_yscale() == "log" and dt.get_xlabel() == "t"
    # the frame holds the more accurate path: every body's path lies inside it
    lo_x, hi_x = orbit.get_xlim()
    frame = min(("learned", expect), key=lambda meth: max(series[meth]["rel_dE"]))
    xs = np.asarray(series[frame]["x"])
    assert lo_x <= xs[..., 0].min() and xs[..., 0].max() <= hi_x


def test_no_positions_no_orbit_panel(monkeypatch, series):
    """Series without ``x`` (no masses given to downsample): the two time panels only."""
    bare = {meth: {k: v for k, v in ser.items() if k != "x"} for meth, ser in series.items()}
    axes, _ = figures(monkeypatch, bare)["kepler.png"]
    assert len(axes) == 2 and axes[0].get_ylabel() == "|ΔE/E|" and axes[1].get_ylabel() == "dt"
