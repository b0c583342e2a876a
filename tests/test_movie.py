"""Orbit movies (driver/movie.py) and the series they are drawn from (aits.scoreboard.downsample)."""
from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from aits import Config
from aits import integrators as I
from aits import scoreboard as S
from aits.physics import kepler_ic
from driver import movie, train

from helpers import write_config

SIZE = (288, 512)  # 12.8 x 7.2 inches at 40 dpi


@pytest.fixture(scope="module")
def kepler_series():
    """Two rules on two periods of an e = 0.7 orbit (unequal masses), downsampled with the masses."""
    m, x, v, period = kepler_ic(0.7, 1.0, [1.0, 0.3])
    runs = {"adaptive": I.integrate(I.Adaptive(0.02), m, x, v, 2 * period),
            "recursive_adaptive": I.integrate(I.RecursiveAdaptive(0.05), m, x, v, 2 * period)}
    return m, runs, {k: S.downsample(r, m=m) for k, r in runs.items()}


def test_downsample_positions_and_momentum_drifts(kepler_series):
    m, runs, series = kepler_series
    run, ser = runs["adaptive"], series["adaptive"]
    n = len(run.trajectory["t"])
    assert len(ser["t"]) == min(S.PLOT_POINTS, n - 1) and np.shape(ser["x"]) == (len(ser["t"]), 2, 2)
    assert np.array_equal(ser["x"][-1], run.trajectory["x"][-1])  # the last bin ends on the last sample
    assert set(S.downsample(run)) == {"t", "rel_dE", "dt"}  # without masses: the plot keys only
    # leapfrog kicks conserve total and angular momentum of a two-body orbit to round-off
    assert max(ser["P_drift"]) < 1e-13 and max(ser["L_drift"]) < 1e-12
    # a made-up trajectory whose momenta drift by known amounts: P by 0.1 t along y, L_z by 5 % per unit t
    t = np.linspace(0.0, 4.0, 401)
    x0 = np.array([[1.0, 0.0], [-1.0, 0.0]])
    v0 = np.array([[0.0, 1.0], [0.0, -1.0]])  # P0 = 0, L0 = 2 (unit masses)
    vs = v0[None] * (1 + 0.05 * t)[:, None, None] + np.array([0.0, 0.05])[None, None] * t[:, None, None]
    fake = I.Run("made_up", {}, {"t": t, "x": np.repeat(x0[None], len(t), 0), "v": vs, "dt": np.full(len(t), 0.01),
                                 "E": np.ones(len(t))})
    d = S.downsample(fake, points=50, m=np.ones(2))
    last = np.linspace(1, 401, 51).astype(int)[1:] - 1
    np.testing.assert_allclose(d["P_drift"], 0.1 * t[last], rtol=1e-12)
    np.testing.assert_allclose(d["L_drift"], 0.05 * t[last], rtol=1e-12)
    # 3-D: the vector L; a z-rotation of the orbit plane into x-z gives the same relative drift
    fake3 = I.Run("made_up", {}, {k: (np.insert(a, 1, 0.0, axis=-1) if k in ("x", "v") else a)
                                  for k, a in fake.trajectory.items()})
    np.testing.assert_allclose(S.downsample(fake3, points=50, m=np.ones(2))["L_drift"], d["L_drift"], rtol=1e-12)
    # a start at rest (L0 = 0, as the Pythagorean problem): the drift is relative to the run's own scale
    m3, x3 = np.array([3.0, 4.0, 5.0]), np.array([[1.0, 3.0], [-2.0, -1.0], [1.0, -1.0]])
    rest = I.integrate(I.Adaptive(0.01), m3, x3, np.zeros((3, 2)), 1.0)
    assert rest.metrics["status"] == "ok" and 0 <= max(S.downsample(rest, m=m3)["L_drift"]) < 1e-12


def test_movie_of_a_short_kepler_run_decodes_with_its_frame_count_and_size(kepler_series, tmp_path):
    m, _, series = kepler_series
    assert movie.mp4_codec()  # imageio-ffmpeg is a dependency: MP4 is the default
    path, fmt, n, seconds = movie.render_movie(series, m, tmp_path / "orbit", frames=12, fps=10, dpi=40,
                                               title="two periods, e = 0.7")
    assert (fmt, path.name, n) == ("mp4", "orbit.mp4", 12) and seconds > 0
    reader = imageio.get_reader(path)
    assert reader.count_frames() == 12
    first, last = reader.get_data(0), reader.get_data(11)
    reader.close()
    assert first.shape == last.shape == (*SIZE, 3)
    # the bodies, trails, curves and time marker moved between the first and the last frame
    assert np.abs(first.astype(int) - last.astype(int)).max() > 100
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically
    # a budget above the bins of the longest series: one frame per bin
    short = {k: {key: val[:7] for key, val in s.items()} for k, s in series.items()}
    assert movie.render_movie(short, m, tmp_path / "short", frames=500, dpi=40)[2] == 7


def test_gif_when_no_mp4_encoder_is_present(kepler_series, tmp_path, monkeypatch):
    m, _, series = kepler_series
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-ffmpeg-here"))  # imageio-ffmpeg's override
    assert movie.mp4_codec() is None and movie.movie_format() == "gif"
    with pytest.raises(ValueError, match="mp4"):
        movie.movie_format("mp4")
    path, fmt, n, _ = movie.render_movie(series, m, tmp_path / "orbit", frames=9, dpi=40)
    assert (fmt, path.suffix, n) == ("gif", ".gif", 9)
    with Image.open(path) as gif:
        assert gif.n_frames == 9 and gif.size == SIZE[::-1]
        first = np.asarray(gif.convert("RGB"))
        gif.seek(8)
        last = np.asarray(gif.convert("RGB"))
    assert np.abs(first.astype(int) - last.astype(int)).max() > 100


def test_movie_rejects_series_without_positions(kepler_series, tmp_path):
    m, runs, _ = kepler_series
    with pytest.raises(ValueError, match="positions"):
        movie.render_movie({"adaptive": S.downsample(runs["adaptive"])}, m, tmp_path / "x", frames=5)
    with pytest.raises(ValueError, match="frames"):
        movie.render_movie({}, m, tmp_path / "x", frames=1)
    assert not list(tmp_path.iterdir())


def test_train_movie_renders_the_final_checkpoint_on_its_training_system(tmp_path, capsys):
    """``driver/train.py --movie``: a tiny in-process run, then its final checkpoint filmed."""
    cfg_path = write_config(tmp_path, name="mv", ray={"inprocess": True}, train={"epochs": 2})
    assert train.main(["--config", cfg_path, "--movie"]) == 0
    run_dir = tmp_path / "runs" / "mv"
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Training movie")]
    assert len(line) == 1 and line[0].startswith("Training movie (mp4, 120 frames,")
    assert line[0].endswith(str((run_dir / "movie.mp4").resolve()))
    reader = imageio.get_reader(run_dir / "movie.mp4")
    assert reader.count_frames() == 120 and reader.get_data(119).shape == (576, 1024, 3)  # 80 dpi
    reader.close()
    # the system filmed: the middle of the training ranges, over one restart period
    cfg = Config.load(cfg_path)
    sys_, s = movie.training_system(cfg), cfg.system
    assert (sys_.params["e"], sys_.params["a"]) == pytest.approx(((s.e_min + s.e_max) / 2, (s.a_min + s.a_max) / 2))
    assert sys_.duration == pytest.approx(s.periods_per_orbit * sys_.params["period"])
    assert not train.parse_args(["--config", cfg_path]).movie
