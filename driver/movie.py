"""Orbit movies from recorded runs: the bodies' paths of two step rules side by side, with |dE/E|,
dt and the drift of total and angular momentum against time under a moving time marker.

Frames are drawn from the downsampled series of :func:`aits.scoreboard.downsample` (never by
re-running): matplotlib's Agg canvas renders each frame to an RGB array; MP4 (H.264) is written
through imageio with the ffmpeg binary of the ``imageio-ffmpeg`` wheel, GIF through Pillow when no
MP4 encoder is found (or ``fmt="gif"``). :func:`training_movie` renders a training run's final
checkpoint on its own training system (``driver/train.py --movie``).
"""
from __future__ import annotations

import functools
import os
import subprocess
import time
from pathlib import Path

import numpy as np

FORMATS = ("mp4", "gif")
FIGSIZE = (12.8, 7.2)  # inches: 1024 x 576 pixels at the default 80 dpi
# bodies: colours other than the methods' C0, C1, C2 (tab10 without them)
BODY_COLORS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
PANELS = (("rel_dE", "|ΔE/E|"), ("dt", "dt"), ("P_drift", "|P − P0|"), ("L_drift", "|L − L0| / |L0|"))


# ---------------------------------------------------------------- encoders
@functools.lru_cache(maxsize=8)
def _h264(exe: str) -> str | None:
    """The MP4 codec the ffmpeg binary ``exe`` offers (libx264, else mpeg4), or None."""
    try:
        out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for codec in ("libx264", "mpeg4"):
        if f" {codec} " in out:
            return codec
    return None


def mp4_codec() -> str | None:
    """The codec MP4 movies are written with, or None when no ffmpeg encoder is available (no
    ``imageio-ffmpeg``, or ``IMAGEIO_FFMPEG_EXE`` naming something that is not an ffmpeg)."""
    try:
        import imageio_ffmpeg
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None
    return _h264(exe)


def movie_format(fmt: str | None = None) -> str:
    """``fmt`` checked ('mp4' needs an encoder), or for None/'auto' mp4 when an encoder exists, else gif."""
    if fmt in (None, "auto"):
        return "mp4" if mp4_codec() else "gif"
    if fmt not in FORMATS:
        raise ValueError(f"movie format must be auto, mp4 or gif, got {fmt!r}")
    if fmt == "mp4" and not mp4_codec():
        raise ValueError("movie format mp4: no ffmpeg encoder found (pip install imageio-ffmpeg)")
    return fmt


class _Mp4:
    def __init__(self, path: Path, fps: float):
        import imageio.v2 as imageio

        # macro_block_size 1: frames are padded to even sizes here instead of rescaled by imageio
        self.w = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec=mp4_codec(),
                                    pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error")

    def add(self, rgb: np.ndarray) -> None:
        self.w.append_data(rgb)

    def close(self) -> None:
        self.w.close()


class _Gif:
    def __init__(self, path: Path, fps: float):
        self.path, self.ms, self.frames = path, max(int(round(1000.0 / fps / 10.0)) * 10, 20), []

    def add(self, rgb: np.ndarray) -> None:
        from PIL import Image

        self.frames.append(Image.fromarray(rgb).quantize(colors=255))  # palette mode: 1 byte a pixel held

    def close(self) -> None:
        first, *rest = self.frames
        first.save(self.path, format="GIF", save_all=True, append_images=rest, duration=self.ms, loop=0)


def _even(rgb: np.ndarray) -> np.ndarray:
    """Padded with white to even height and width (what yuv420p needs)."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255)


# ---------------------------------------------------------------- the movie
def frame_indices(series: dict[str, dict], frames: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frame times on one grid over all series, and per series the index of its last bin at or
    before each frame time; ``min(frames, longest series)`` frames."""
    ts = {k: np.asarray(s["t"], dtype=float) for k, s in series.items()}
    n = int(min(frames, max(len(t) for t in ts.values())))
    grid = np.linspace(min(t[0] for t in ts.values()), max(t[-1] for t in ts.values()), n)
    return grid, {k: np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1) for k, t in ts.items()}


def _limits(xs: list[np.ndarray]) -> tuple[tuple, tuple]:
    """Common x-y limits of the orbit panels: every series' range, except series that strayed more than
    ten times as far as the first one (a blown-up run leaves the picture rather than shrinking it)."""
    spans = [(np.nanmin(x[..., :2].reshape(-1, 2), 0), np.nanmax(x[..., :2].reshape(-1, 2), 0)) for x in xs]
    size0 = float(np.max(spans[0][1] - spans[0][0])) or 1.0
    keep = [s for s in spans if float(np.max(s[1] - s[0])) <= 10 * size0]
    lo, hi = np.min([s[0] for s in keep], 0), np.max([s[1] for s in keep], 0)
    centre = (lo + hi) / 2
    half = np.maximum((hi - lo) / 2 * 1.08, 1e-3 * max(float(np.max(hi - lo)), 1e-12))
    return (centre[0] - half[0], centre[0] + half[0]), (centre[1] - half[1], centre[1] + half[1])


def _positive(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return np.where(v > 0, v, np.nan)  # zeros and non-finite values leave gaps on log axes


def render_movie(series_by_method: dict[str, dict], m, path_stem, frames: int = 120, fps: float = 20,
                 dpi: int = 80, title: str = "", fmt: str | None = None, trail: int | None = None
                 ) -> tuple[Path, str, int, float]:
    """Render the recorded runs of two (or more) step rules as one movie.

    Parameters
    ----------
    series_by_method : dict
        {method: series of :func:`aits.scoreboard.downsample` with masses}; each holds ``t`` (B,),
        ``x`` (B, N, D), ``rel_dE``, ``dt``, ``P_drift`` and optionally ``L_drift`` (B,). The first
        three methods get an orbit panel each (x-y plane; the x-y projection in 3-D), all of them
        curves in the four panels against time.
    m : array (N,)
        Masses (marker areas grow with them).
    path_stem : str or Path
        Output path without its suffix; ``.mp4`` or ``.gif`` is appended.
    frames : int
        Frame budget (>= 2): ``min(frames, longest series' bins)`` frames at equal time intervals.
    fps : float
        Frames per second of the movie.
    dpi : int
        Pixels per inch of the 12.8 x 7.2 inch figure (80: 1024 x 576 pixels).
    title : str
        Figure title.
    fmt : {None, 'auto', 'mp4', 'gif'}
        None/'auto': MP4 when an ffmpeg encoder is available, else GIF.
    trail : int, optional
        Bins of path kept behind each body (None: the whole path so far).

    Returns
    -------
    (path, format, n_frames, seconds)
        The file written, 'mp4' or 'gif', the frame count and the rendering wall time in seconds.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if frames < 2 or fps <= 0 or dpi <= 0:
        raise ValueError(f"movie needs frames >= 2, fps > 0, dpi > 0 (got {frames}, {fps}, {dpi})")
    series = {k: s for k, s in series_by_method.items() if s}
    missing = [k for k, s in series.items() if "x" not in s]
    if not series or missing:
        raise ValueError(f"movie: series without positions {missing or list(series_by_method)} "
                         "(downsample the runs with their masses)")
    kind = movie_format(fmt)
    start = time.perf_counter()
    grid, idx = frame_indices(series, frames)
    xs = {k: np.asarray(s["x"], dtype=float) for k, s in series.items()}
    m = np.asarray(m, dtype=float)
    sizes = 12.0 + 40.0 * m / m.max()
    orbit_names = list(series)[:3]
    colors = {k: f"C{i}" for i, k in enumerate(series)}

    fig = Figure(figsize=FIGSIZE, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 1, height_ratios=[3, 2], hspace=0.25, left=0.06, right=0.985, top=0.92, bottom=0.08)
    top = gs[0].subgridspec(1, len(orbit_names), wspace=0.15)
    bottom = gs[1].subgridspec(1, len(PANELS), wspace=0.35)
    fig.suptitle(title, fontsize=11)
    xlim, ylim = _limits([xs[k] for k in orbit_names])
    moving = []  # artists redrawn each frame over the static background (blitting)
    bodies = {}
    for i, name in enumerate(orbit_names):
        ax = fig.add_subplot(top[0, i])
        # the common square as data limits: equal scales widen it to fill the panel (fixed limits could not)
        ax.update_datalim([(xlim[0], ylim[0]), (xlim[1], ylim[1])])
        ax.margins(0)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
        ax.set_title(name, color=colors[name], fontsize=10)
        n_bodies = xs[name].shape[1]
        body = [BODY_COLORS[b % len(BODY_COLORS)] for b in range(n_bodies)]
        paths = [ax.plot([], [], lw=0.7, color=body[b], alpha=0.8, animated=True)[0] for b in range(n_bodies)]
        dots = ax.scatter(xs[name][0, :, 0], xs[name][0, :, 1], s=sizes, c=body,
                          edgecolors="k", linewidths=0.4, zorder=3, animated=True)
        label = ax.text(0.02, 0.97, "", transform=ax.transAxes, va="top", fontsize=8, animated=True, zorder=4,
                        bbox={"fc": "white", "ec": "none", "alpha": 0.75, "pad": 1.5})
        bodies[name] = (paths, dots, label)
        moving += [*paths, dots, label]
    curves, markers = [], []
    for j, (key, ylabel) in enumerate(PANELS):
        ax = fig.add_subplot(bottom[0, j])
        ax.set_title(ylabel, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("t", fontsize=8)
        drawn = False
        for name, s in series.items():
            if key not in s:
                continue
            y = _positive(s[key])
            t = np.asarray(s["t"], dtype=float)
            if np.isfinite(y).any():
                ax.semilogy(t, y, lw=0.6, color=colors[name], alpha=0.25)  # the whole run, faint
                drawn = True
            line = ax.semilogy([], [], lw=1.0, color=colors[name], label=name, animated=True)[0]
            curves.append((line, t, y, name))
            moving.append(line)
        if not drawn:
            ax.text(0.5, 0.5, "n/a" if all(key not in s for s in series.values()) else "0 throughout",
                    ha="center", transform=ax.transAxes, fontsize=9)
        ax.set_xlim(grid[0], grid[-1] if grid[-1] > grid[0] else grid[0] + 1)
        if j == 0:
            ax.legend(fontsize=7, loc="lower right")
        marker = ax.axvline(grid[0], color="k", lw=0.8, animated=True)
        markers.append(marker)
        moving.append(marker)

    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    path = Path(str(path_stem) + f".{kind}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.{kind}")  # the suffix tells ffmpeg the container
    writer = (_Mp4 if kind == "mp4" else _Gif)(tmp, fps)
    try:
        for f, tk in enumerate(grid):
            for name in orbit_names:
                k = int(idx[name][f])
                paths, dots, label = bodies[name]
                lo = 0 if trail is None else max(k + 1 - trail, 0)
                for b, line in enumerate(paths):
                    line.set_data(xs[name][lo:k + 1, b, 0], xs[name][lo:k + 1, b, 1])
                dots.set_offsets(xs[name][k, :, :2])
                label.set_text(f"t = {tk:.5g}   |ΔE/E| = {series[name]['rel_dE'][k]:.2e}   frame {f + 1}/{len(grid)}")
            for line, t, y, name in curves:
                k = int(idx[name][f]) + 1
                line.set_data(t[:k], y[:k])
            for marker in markers:
                marker.set_xdata([tk, tk])
            canvas.restore_region(background)
            for artist in moving:
                fig.draw_artist(artist)
            writer.add(_even(np.asarray(canvas.buffer_rgba())[..., :3].copy()))
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, kind, len(grid), time.perf_counter() - start


def pick_pair(entry: dict, series: dict[str, dict]) -> tuple[str, str | None]:
    """(learned method, classical method) of a movie: the primary learned run and the scoreboard's
    strongest classical family (``entry['strongest']``), else the classical family with the lowest
    max |dE/E| among the recorded series, chosen as the scoreboard chooses."""
    from aits.scoreboard import CLASSICAL, strongest

    learned = next(iter(entry["methods"]))
    best = entry.get("strongest")
    if best not in series:
        best = strongest(entry["methods"], [f for f in CLASSICAL if f in entry["methods"] and series.get(f)], None)
    return learned, best


def _e(x) -> str:
    return "–" if x is None else f"{x:.2e}"


def movie_systems(systems, requested=None) -> list[str]:
    """Names of the systems an evaluation films: ``requested`` (checked: ValueError naming an unknown
    one), else every long or practitioner system, else the first system."""
    names = [s.name for s in systems]
    if requested:
        unknown = [n for n in requested if n not in names]
        if unknown:
            raise ValueError(f"--movie-system: no system {unknown[0]!r} in this suite (systems: {', '.join(names)})")
        return list(dict.fromkeys(requested))
    chosen = [s.name for s in systems if s.long or s.family in ("practitioner", "user")]
    return chosen or names[:1]


def evaluation_movies(out_dir, systems: dict[str, dict], plots: dict[str, dict], names: list[str],
                      frames: int = 120, fps: float = 20, dpi: int = 80, fmt: str | None = None,
                      label: str = "") -> dict[str, str]:
    """Render ``out_dir/<system>.mp4`` (or ``.gif``) for each of ``names``: the primary learned run
    beside the strongest classical one (:func:`pick_pair`), from the scoreboard entries ``systems``
    and the plot data ``plots`` ({system: entry['_plot']}) of one checkpoint. Prints one line per
    movie; returns {system: file name}."""
    out = {}
    for name in names:
        entry, plot = systems[name], plots[name]
        learned, classical = pick_pair(entry, plot["series"])
        pair = {k: plot["series"][k] for k in (learned, classical) if k}
        errs = "  vs  ".join(f"{k} max |ΔE/E| {_e(entry['methods'][k].get('max_rel_dE'))}" for k in pair)
        title = (f"{name} {label}: {errs}  at {entry['methods'][learned].get('force_evals')} force evaluations"
                 if classical else f"{name} {label}: {errs}")
        path, kind, n, seconds = render_movie(pair, plot["m"], Path(out_dir) / name, frames=frames, fps=fps, dpi=dpi,
                                              title=title, fmt=fmt)
        print(f"Movie {name}: {kind}, {n} frames, {path.stat().st_size / 1e6:.2f} MB, rendered in {seconds:.1f} s: "
              f"{path}", flush=True)
        out[name] = path.name
    return out


# ---------------------------------------------------------------- the training movie
def training_system(cfg):
    """The system a training run learns on, as a scoreboard System: for kepler the orbit at the middle
    of the e and a ranges over ``system.periods_per_orbit`` periods; for random and file ICs the
    first seeded system (or the file) over ``system.restart_after`` crossing times."""
    from aits.physics import crossing_time, load_ic_file
    from aits.scoreboard import System, kepler_system, random_system

    s = cfg.system
    if s.ic == "kepler":
        sys_ = kepler_system((s.e_min + s.e_max) / 2, (s.a_min + s.a_max) / 2, s.periods_per_orbit,
                             "training", s.dim, s.mass)
        sys_.name = f"training_{sys_.name}"
        return sys_
    if s.ic == "mixture":  # the first system drawn, without its massless padding
        from aits.families import first_system

        name, d = first_system(s, cfg.run.seed)
        return System(f"training_{name}", "mixture", "training", {"family": name, "period": d.period}, d.m, d.x, d.v,
                      (s.restart_after if name == "few_body" else s.periods_per_orbit) * d.period, eps=s.softening)
    if s.ic == "random":
        sys_ = random_system(s.num_particles, s.dim, cfg.run.seed, s.restart_after, s.softening, s.mass,
                             s.pos_scale, s.vel_scale)
        sys_.name, sys_.family = f"training_{sys_.name}", "training"
        return sys_
    m, x, v = load_ic_file(s.ic_path)
    tc = crossing_time(m, x)
    return System(f"training_{Path(s.ic_path).stem}", "file", "training", {"path": s.ic_path, "crossing_time": tc},
                  m, x, v, s.restart_after * tc, eps=s.softening)


def training_movie(run_dir, frames: int = 120, fps: float = 20, dpi: int = 80, fmt: str | None = None
                   ) -> tuple[Path, str, int, float]:
    """The newest checkpoint of ``run_dir`` on its training system: the learned rule beside the
    classical step recursion (``recursive_adaptive``) at equal force evaluations, written to
    ``run_dir/movie.mp4`` (or ``.gif``). Returns what :func:`render_movie` returns."""
    from aits import config_from_checkpoint, latest_checkpoint, load_checkpoint
    from aits.policy import learned_methods
    from aits.scoreboard import score_system

    path = latest_checkpoint(Path(run_dir))
    if path is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint to render")
    ckpt = load_checkpoint(path)
    cfg = config_from_checkpoint(ckpt)
    sys_ = training_system(cfg)
    name, method = next(iter(learned_methods(ckpt, cfg).items()))
    entry = score_system(sys_, {name: method}, n_steps=cfg.system.n_steps, baselines=("recursive_adaptive",),
                         reference=False)
    plot = entry["_plot"]
    lm, bm = entry["methods"][name], entry["methods"]["recursive_adaptive"]
    title = (f"{cfg.run.name} {Path(path).stem} on {sys_.name}: max |ΔE/E| {name} {lm['max_rel_dE']:.2e} vs "
             f"recursive_adaptive {bm['max_rel_dE']:.2e} at {lm['force_evals']} force evaluations")
    return render_movie(plot["series"], plot["m"], Path(run_dir) / "movie", frames=frames, fps=fps, dpi=dpi,
                        title=title, fmt=fmt)
