"""Config: YAML loading, --set overrides, one clear line per invalid value, checkpoint round trip."""
import numpy as np
import pytest
import torch

from aits import (CheckpointError, Config, ConfigError, DtModel, build_payload, checkpoint_path,
                  config_from_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint)


def test_defaults_are_the_seeds():
    cfg = Config()
    t = cfg.train
    assert (t.energy_threshold, t.E_lower, t.E_upper, t.lr, t.weight_decay) == (2e-4, 1e-6, 1e-4, 1e-4, 1e-2)
    assert (t.generalize_steps, t.generalize_batch_size, t.steps_per_epoch) == (1000, 512, 1)
    assert cfg.model.hidden_dims == [200, 1000, 1000, 200]
    assert (cfg.system.e_min, cfg.system.e_max, cfg.system.a_min, cfg.system.a_max) == (0.6, 0.95, 0.8, 1.2)
    cfg.validate()


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  energy_threshold: 2e-4\n  epochs: 5\nmodel:\n  hidden_dims: [8, 8]\n")
    cfg = Config.load(path, ["train.lr=3e-3", "model.hidden_dims=4,4", "ray.inprocess=true", "run.name=abc"])
    assert cfg.train.energy_threshold == 2e-4 and cfg.train.epochs == 5
    assert cfg.train.lr == 3e-3 and cfg.model.hidden_dims == [4, 4]
    assert cfg.ray.inprocess is True and cfg.run.name == "abc"


INVALID = [
    ({"train": {"energy_treshold": 1e-4}}, "unknown key 'train.energy_treshold' (did you mean 'train.energy_threshold'?)"),
    ({"trian": {}}, "unknown section 'trian' (did you mean 'train'?)"),
    ({"train": {"epochs": "many"}}, "train.epochs: expected an integer, got 'many'"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"train": {"energy_threshold": 0}}, "train.energy_threshold: must be > 0"),
    ({"train": {"energy_threshold": -1e-4}}, "train.energy_threshold: must be > 0"),
    ({"train": {"E_lower": 1e-4, "E_upper": 1e-5}}, "train.E_lower: 0.0001 must be below train.E_upper 1e-05"),
    ({"train": {"E_upper": 5e-4}}, "train.E_upper: 0.0005 exceeds train.energy_threshold 0.0002"),
    ({"features": {"feature_type": "delta_mag", "history_len": 0}}, "delta_mag needs features.history_len >= 1"),
    ({"features": {"feature_type": "fancy"}}, "features.feature_type: 'fancy' is not one of basic, rich, delta_mag"),
    ({"train": {"steps_per_epoch": 0}}, "train.steps_per_epoch: must be >= 1, got 0"),
    ({"system": {"num_particles": 1, "ic": "random"}}, "system.num_particles: must be >= 2, got 1"),
    ({"system": {"num_particles": 3}}, "system.num_particles: kepler needs exactly 2 bodies, got 3"),
    ({"system": {"e_max": 1.0}}, "system.e_max: must lie in [0, 1), got 1.0"),
    ({"system": {"e_min": -0.1}}, "system.e_min: must lie in [0, 1), got -0.1"),
    ({"system": {"a_min": 0}}, "system.a_min: must be > 0, got 0"),
    ({"system": {"ic": "file", "ic_path": "/nonexistent/ic.npy"}}, "system.ic_path: IC file /nonexistent/ic.npy: not found"),
    ({"system": {"ic": "file"}}, "system.ic_path: required when system.ic is 'file'"),
    ({"model": {"activation": "gelu"}}, "model.activation: 'gelu' is not one of tanh, relu, silu, sigmoid"),
    ({"wandb": {"mode": "cloud"}}, "wandb.mode: 'cloud' is not one of offline, online, disabled"),
    ({"ray": {"num_collectors": 0}}, "ray.num_collectors: must be >= 1, got 0"),
    ({"run": {"dtype": "float16"}}, "run.dtype: 'float16' is not one of float64, float32"),
    ({"train": {"band_on_accept": "yes"}}, "train.band_on_accept: expected true/false"),
    ({"model": {"recursive": True}}, "model.recursive: the step recursion needs model.output factor"),
    ({"features": {"timescale": "blend"}}, "features.timescale: 'blend' needs features.feature_type scale_free"),
    ({"features": {"feature_type": "scale_free", "history_len": 0, "radial_feature": "energy"}},
     "features.radial_feature: 'energy' needs features.feature_type scale_free and model.output factor"),
    ({"features": {"radial_feature": "cosine"}}, "features.radial_feature: 'cosine' is not one of fraction, energy"),
    ({"features": {"feature_type": "scale_free", "timescale": "prs"}},
     "features.timescale: 'prs' is not one of nn, blend, soft_blend, prs_lean"),
    ({"train": {"passage_hinge_timescales": ["tau"]}},
     "train.passage_hinge_timescales: unknown timescale 'tau'"),
    ({"train": {"passage_hinge_timescales": ["nn"]}},
     "train.passage_hinge_timescales: the hinge compares with these classical rules; set train.passage_hinge > 0"),
    ({"features": {"feature_type": "scale_free", "history_len": 0},
      "model": {"output": "factor", "recursive": True, "symmetric_iterations": 1}},
     "model.recursive: pick one step rule; symmetric_iterations is 1"),
]


@pytest.mark.parametrize("data,message", INVALID, ids=[m.split(":")[0][:40] for _, m in INVALID])
def test_invalid_config_gives_its_message(data, message):
    with pytest.raises(ConfigError) as err:
        Config.from_dict(data)
    lines = str(err.value).splitlines()
    assert any(message in line for line in lines), lines
    assert len(lines) == len(err.value.problems)


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"train": {"epochs": 0, "lr": -1.0}, "system": {"e_max": 2.0}})
    assert len(err.value.problems) == 3


def test_bad_override_and_files(tmp_path):
    with pytest.raises(ConfigError, match="--set train.lr: expected section.key=value"):
        Config.from_dict({}, ["train.lr"])
    with pytest.raises(ConfigError, match="train.lr: expected a number, got 'abc'"):
        Config.from_dict({}, ["train.lr=abc"])
    with pytest.raises(ConfigError, match="config file .*missing.yaml: not found"):
        Config.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        Config.load(bad)


def test_ic_file_must_match_config(tmp_path):
    np.save(tmp_path / "ic.npy", np.ones((3, 5)) * np.arange(1, 4)[:, None])
    with pytest.raises(ConfigError, match="holds N=3 D=2, config says N=4 D=2"):
        Config.from_dict({"system": {"ic": "file", "ic_path": str(tmp_path / "ic.npy"), "num_particles": 4}})
    (tmp_path / "junk.txt").write_text("hello world\n")
    with pytest.raises(ConfigError, match="junk.txt: cannot parse"):
        Config.from_dict({"system": {"ic": "file", "ic_path": str(tmp_path / "junk.txt"), "num_particles": 3}})


def _payload(cfg, epoch=3):
    model = DtModel(10, [8], seed=1).double()
    opt = torch.optim.Adam(model.parameters())
    return build_payload(epoch, model.state_dict(), opt.state_dict(), cfg, {"L0": 2.0, "V0": 1.0, "A0": 1.0, "T0": 2.0},
                         loss=0.5, extra={"collectors": [{"x": np.arange(3.0)}]})


def test_checkpoint_round_trip_and_contract(tmp_path):
    cfg = Config.from_dict({"train": {"lr": 3e-3}, "features": {"history_len": 2, "feature_type": "rich"}})
    path = save_checkpoint(checkpoint_path(tmp_path, 3), _payload(cfg))
    assert path.name == "model_epoch_0003.pt"
    ck = load_checkpoint(path)
    for key in ("epoch", "model_state_dict", "model_state", "optimizer_state_dict", "optimizer_state", "loss",
                "info", "logs", "extra", "config", "config_summary", "history_len", "feature_type", "dtype",
                "norm_scales"):
        assert key in ck, key
    assert (ck["history_len"], ck["feature_type"], ck["dtype"]) == (2, "rich", "float64")
    assert config_from_checkpoint(ck) == cfg
    assert config_from_checkpoint(ck, ["train.lr=1e-2"]).train.lr == 1e-2
    np.testing.assert_array_equal(ck["extra"]["collectors"][0]["x"], np.arange(3.0))
    assert list(tmp_path.joinpath("model").iterdir()) == [path]  # no temporary files left


def test_checkpoint_errors_and_atomicity(tmp_path):
    cfg = Config()
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt: unreadable or corrupt"):
        load_checkpoint(corrupt)
    good = save_checkpoint(checkpoint_path(tmp_path, 1), _payload(cfg, 1))
    before = good.read_bytes()
    bad = _payload(cfg, 1)
    bad["extra"]["unpicklable"] = lambda: None  # torch.save fails mid-write
    with pytest.raises(Exception):
        save_checkpoint(good, bad)
    assert good.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in good.parent.iterdir()) == ["model_epoch_0001.pt"]
    save_checkpoint(checkpoint_path(tmp_path, 12), _payload(cfg, 12))
    assert latest_checkpoint(tmp_path).name == "model_epoch_0012.pt"


def test_every_field_declares_a_one_line_doc():
    import dataclasses

    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.type if isinstance(sec.type, type) else type(getattr(Config(), sec.name))):
            doc = f.metadata.get("doc", "")
            assert doc and "\n" not in doc, f"{sec.name}.{f.name}"


@pytest.mark.parametrize("name", ["ray.yaml", "seed.yaml", "cluster.yaml"])
def test_shipped_configs_load_and_list_only_what_differs(name):
    import pathlib

    import yaml

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / name
    Config.load(path)
    defaults = Config().to_dict()
    data = yaml.safe_load(path.read_text())
    same = [f"{s}.{k}" for s, vals in data.items() for k, v in vals.items() if defaults[s][k] == v]
    assert not same, same


@pytest.mark.parametrize("spelling", ["nan", ".nan", "NaN", "inf", ".inf", "-.inf", "-inf", "1e999", "-1e999",
                                      "9" * 400])
def test_nonfinite_numbers_are_refused_in_every_spelling(spelling):
    with pytest.raises(ConfigError) as err:
        Config.from_dict({}, [f"train.lr={spelling}"])
    assert err.value.problems == [err.value.problems[0]] and "train.lr: must be a finite number" in err.value.problems[0]


def test_huge_integers_are_refused():
    for key in ("train.epochs", "ray.num_collectors", "system.n_steps", "run.seed", "train.generalize_capacity"):
        with pytest.raises(ConfigError, match=f"{key}: must be <="):
            Config.from_dict({}, [f"{key}={10 ** 30}"])


def test_unreadable_config_and_ic_files_give_one_line(tmp_path, monkeypatch):
    import pathlib

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 2\n")
    ic = tmp_path / "ic.txt"
    ic.write_text("1 0 0 0 0.5\n1 1 0 0 -0.5\n")
    original = pathlib.Path.read_bytes

    def denied(self):  # as chmod 000 does for a non-root user (the tests may run as root)
        if self in (cfg, ic):
            raise PermissionError(13, "Permission denied")
        return original(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", denied)
    with pytest.raises(ConfigError) as err:
        Config.load(cfg)
    assert err.value.problems == [f"config file {cfg}: cannot read (Permission denied)"]
    with pytest.raises(ConfigError) as err:
        Config.from_dict({"system": {"ic": "file", "ic_path": str(ic)}})
    assert err.value.problems == [f"system.ic_path: IC file {ic}: cannot read (Permission denied)"]


def test_timescale_choices_are_the_library_timescales():
    # aits.config spells the choices out (importing aits.steprules would pull torch into the config module); a
    # timescale added to aits.steprules.BLENDS and not here (or the reverse) would be refused or crash in training.
    import dataclasses

    from aits.config import FEATURE_TIMESCALES, FeaturesConfig
    from aits.steprules import BLENDS

    field = {f.name: f for f in dataclasses.fields(FeaturesConfig)}["timescale"]
    assert field.metadata["choices"] == FEATURE_TIMESCALES == ("nn", *BLENDS)
