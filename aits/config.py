"""Typed run configuration: YAML sections, ``--set section.key=value`` overrides, validation.

Every problem is reported as one line naming the key and what is wrong.
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml


# Old names of keys (the generalize phase used to be called "replay"): still read, with a warning line.
DEPRECATED_KEYS = {
    "train.replay_steps": "train.generalize_steps",
    "train.replay_batch_size": "train.generalize_batch_size",
    "train.min_replay_size": "train.generalize_min_samples",
    "train.replay_capacity": "train.generalize_capacity",
}


class ConfigError(ValueError):
    """Invalid configuration; ``str(err)`` is one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class RunConfig:
    name: str = "ray_run"
    output_dir: str = "runs"
    seed: int = 0
    dtype: str = "float64"
    checkpoint_interval: int = 10
    duration: Optional[float] = None  # seconds; stop after the current epoch


@dataclass
class SystemConfig:
    ic: str = "kepler"  # kepler | random | file
    num_particles: int = 2
    dim: int = 2
    mass: Union[float, list[float]] = 1.0
    softening: float = 0.0
    n_steps: int = 1  # leapfrog substeps per predicted dt
    e_min: float = 0.6
    e_max: float = 0.95
    a_min: float = 0.8
    a_max: float = 1.2
    pos_scale: float = 1.0
    vel_scale: float = 0.5
    ic_path: Optional[str] = None
    periods_per_orbit: float = 3.0


@dataclass
class FeaturesConfig:
    history_len: int = 0
    feature_type: str = "basic"  # basic | rich | delta_mag
    normalize_inputs: str = "none"  # none | auto | manual
    L0: float = 1.0
    V0: float = 1.0
    A0: float = 1.0
    T0: float = 1.0


@dataclass
class ModelConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [200, 1000, 1000, 200])
    activation: str = "tanh"
    dropout: float = 0.0
    fourier_scale: float = 0.0
    fourier_dim: int = 16
    init_dt: Optional[float] = None  # initial dt of an untrained model (output bias)
    dtype: Optional[str] = None  # model precision; None = run.dtype (physics stays run.dtype)


@dataclass
class TrainConfig:
    epochs: int = 1000
    energy_threshold: float = 2e-4
    steps_per_epoch: int = 1
    generalize_steps: int = 1000
    generalize_batch_size: int = 512
    generalize_min_samples: int = 2
    E_lower: float = 1e-6
    E_upper: float = 1e-4
    lr: float = 1e-4
    weight_decay: float = 1e-2
    max_retrain_steps: int = 0  # 0 = unlimited
    generalize_capacity: int = 0  # 0 = this epoch's samples only (seed)
    band_on_accept: bool = False  # opt-in: lower band edge also trains accepted samples


@dataclass
class RayConfig:
    address: str = ""  # "" local; "auto" or host:port joins a cluster
    num_collectors: int = 2
    systems_per_collector: int = 1  # B systems stepped at once by each collector
    inprocess: bool = False
    learner_gpus: float = 0.0
    collector_cpus: float = 1.0
    learner_cpus: float = 1.0
    pipeline: bool = False  # opt-in: collect epoch e+1 with the weights of epoch e-1 while the learner trains


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled
    project: str = "AITimeStepper"
    entity: Optional[str] = None
    name: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    system: SystemConfig = field(default_factory=SystemConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: dict | None, overrides: list[str] | None = None) -> "Config":
        """Build and validate. Raises ConfigError listing every problem."""
        problems: list[str] = []
        data = dict(data or {})
        for item in overrides or []:
            _apply_override(data, item, problems)
        cfg = cls()
        sections = {f.name: f for f in dataclasses.fields(cls)}
        for sec_name, values in data.items():
            if sec_name not in sections:
                problems.append(f"unknown section '{sec_name}'{_hint(sec_name, sections)}")
                continue
            if values is None:
                continue
            if not isinstance(values, dict):
                problems.append(f"section '{sec_name}' must be a mapping, got {type(values).__name__}")
                continue
            section = getattr(cfg, sec_name)
            hints = typing.get_type_hints(type(section))
            names = {f.name for f in dataclasses.fields(section)}
            for key, raw in values.items():
                new = DEPRECATED_KEYS.get(f"{sec_name}.{key}")
                if new is not None:
                    print(f"warning: {sec_name}.{key} is deprecated, use {new}", file=sys.stderr)
                    key = new.split(".", 1)[1]
                if key not in names:
                    problems.append(f"unknown key '{sec_name}.{key}'{_hint(key, names, sec_name)}")
                    continue
                try:
                    setattr(section, key, _coerce(raw, hints[key]))
                except TypeError as exc:
                    problems.append(f"{sec_name}.{key}: {exc}")
        if problems:
            raise ConfigError(problems)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path, overrides: list[str] | None = None) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError([f"config file {path}: not found"])
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "parse error"
            raise ConfigError([f"config file {path}: invalid YAML ({first})"]) from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError([f"config file {path}: top level must be a mapping of sections"])
        return cls.from_dict(data, overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        s, f, m, t = self.system, self.features, self.model, self.train
        return (f"{s.ic} N={s.num_particles} D={s.dim} | features {f.feature_type} K={f.history_len} "
                f"norm={f.normalize_inputs} | model {m.hidden_dims} {m.activation} | "
                f"thr={t.energy_threshold:g} band=[{t.E_lower:g},{t.E_upper:g}] lr={t.lr:g} "
                f"epochs={t.epochs} steps/epoch={t.steps_per_epoch}")

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        p: list[str] = []
        r, s, f, m, t, ry, w = self.run, self.system, self.features, self.model, self.train, self.ray, self.wandb

        def choice(key, value, options):
            if value not in options:
                p.append(f"{key}: '{value}' is not one of {', '.join(options)}")

        choice("run.dtype", r.dtype, ("float64", "float32"))
        if not r.name or "/" in r.name:
            p.append(f"run.name: '{r.name}' must be a non-empty name without '/'")
        if r.checkpoint_interval < 1:
            p.append(f"run.checkpoint_interval: must be >= 1, got {r.checkpoint_interval}")
        if r.duration is not None and r.duration <= 0:
            p.append(f"run.duration: must be > 0 seconds, got {r.duration}")

        choice("system.ic", s.ic, ("kepler", "random", "file"))
        if s.num_particles < 2:
            p.append(f"system.num_particles: must be >= 2, got {s.num_particles}")
        if s.dim not in (2, 3):
            p.append(f"system.dim: must be 2 or 3, got {s.dim}")
        masses = s.mass if isinstance(s.mass, list) else [s.mass]
        if any(mm <= 0 for mm in masses):
            p.append(f"system.mass: masses must be > 0, got {s.mass}")
        elif isinstance(s.mass, list) and len(s.mass) not in (1, s.num_particles):
            p.append(f"system.mass: {len(s.mass)} values for {s.num_particles} particles")
        if s.softening < 0:
            p.append(f"system.softening: must be >= 0, got {s.softening}")
        if s.n_steps < 1:
            p.append(f"system.n_steps: must be >= 1, got {s.n_steps}")
        if s.ic == "kepler":
            if s.num_particles != 2:
                p.append(f"system.num_particles: kepler needs exactly 2 bodies, got {s.num_particles}")
            for key in ("e_min", "e_max"):
                val = getattr(s, key)
                if not 0 <= val < 1:
                    p.append(f"system.{key}: eccentricity must lie in [0, 1), got {val}")
            for key in ("a_min", "a_max"):
                val = getattr(s, key)
                if val <= 0:
                    p.append(f"system.{key}: semi-major axis must be > 0, got {val}")
            if s.e_min > s.e_max:
                p.append(f"system.e_min: {s.e_min} is above system.e_max {s.e_max}")
            if s.a_min > s.a_max:
                p.append(f"system.a_min: {s.a_min} is above system.a_max {s.a_max}")
            if s.periods_per_orbit <= 0:
                p.append(f"system.periods_per_orbit: must be > 0, got {s.periods_per_orbit}")
        if s.ic == "random" and (s.pos_scale <= 0 or s.vel_scale <= 0):
            p.append("system.pos_scale/vel_scale: must be > 0 for random ICs")
        if s.ic == "file":
            if not s.ic_path:
                p.append("system.ic_path: required when system.ic is 'file'")
            else:
                from .physics import load_ic_file

                try:
                    mm, xx, _ = load_ic_file(s.ic_path)
                    if xx.shape != (s.num_particles, s.dim):
                        p.append(f"system.ic_path: file {s.ic_path} holds N={xx.shape[0]} D={xx.shape[1]}, "
                                 f"config says N={s.num_particles} D={s.dim}")
                except ValueError as exc:
                    p.append(f"system.ic_path: {exc}")

        choice("features.feature_type", f.feature_type, ("basic", "rich", "delta_mag"))
        choice("features.normalize_inputs", f.normalize_inputs, ("none", "auto", "manual"))
        if f.history_len < 0:
            p.append(f"features.history_len: must be >= 0, got {f.history_len}")
        if f.feature_type == "delta_mag" and f.history_len < 1:
            p.append("features.feature_type: delta_mag needs features.history_len >= 1, got "
                     f"{f.history_len}")
        if f.normalize_inputs == "manual":
            for key in ("L0", "V0", "A0", "T0"):
                if getattr(f, key) <= 0:
                    p.append(f"features.{key}: manual scale must be > 0, got {getattr(f, key)}")

        if not m.hidden_dims or any(h < 1 for h in m.hidden_dims):
            p.append(f"model.hidden_dims: must be a non-empty list of positive ints, got {m.hidden_dims}")
        if m.dtype is not None:
            choice("model.dtype", m.dtype, ("float64", "float32"))
        choice("model.activation", m.activation, ("tanh", "relu", "silu", "sigmoid"))
        if not 0 <= m.dropout < 1:
            p.append(f"model.dropout: must lie in [0, 1), got {m.dropout}")
        if m.fourier_scale < 0:
            p.append(f"model.fourier_scale: must be >= 0, got {m.fourier_scale}")
        if m.fourier_scale > 0 and m.fourier_dim < 1:
            p.append(f"model.fourier_dim: must be >= 1 with Fourier features, got {m.fourier_dim}")
        if m.init_dt is not None and m.init_dt <= 0:
            p.append(f"model.init_dt: must be > 0, got {m.init_dt}")

        if t.epochs < 1:
            p.append(f"train.epochs: must be >= 1, got {t.epochs}")
        if t.energy_threshold <= 0:
            p.append(f"train.energy_threshold: must be > 0, got {t.energy_threshold}")
        if t.E_lower <= 0:
            p.append(f"train.E_lower: must be > 0, got {t.E_lower}")
        if t.E_upper <= 0:
            p.append(f"train.E_upper: must be > 0, got {t.E_upper}")
        if t.E_lower >= t.E_upper:
            p.append(f"train.E_lower: {t.E_lower:g} must be below train.E_upper {t.E_upper:g}")
        if t.energy_threshold > 0 and t.E_upper > t.energy_threshold:
            p.append(f"train.E_upper: {t.E_upper:g} exceeds train.energy_threshold {t.energy_threshold:g}; "
                     "a rejected step could have zero loss and retrain for ever")
        if t.steps_per_epoch < 1:
            p.append(f"train.steps_per_epoch: must be >= 1, got {t.steps_per_epoch}")
        for key in ("generalize_steps", "generalize_min_samples", "max_retrain_steps", "generalize_capacity"):
            if getattr(t, key) < 0:
                p.append(f"train.{key}: must be >= 0, got {getattr(t, key)}")
        if t.generalize_batch_size < 1:
            p.append(f"train.generalize_batch_size: must be >= 1, got {t.generalize_batch_size}")
        if t.lr <= 0:
            p.append(f"train.lr: must be > 0, got {t.lr}")
        if t.weight_decay < 0:
            p.append(f"train.weight_decay: must be >= 0, got {t.weight_decay}")

        if ry.num_collectors < 1:
            p.append(f"ray.num_collectors: must be >= 1, got {ry.num_collectors}")
        if ry.systems_per_collector < 1:
            p.append(f"ray.systems_per_collector: must be >= 1, got {ry.systems_per_collector}")
        for key in ("learner_gpus", "collector_cpus", "learner_cpus"):
            if getattr(ry, key) < 0:
                p.append(f"ray.{key}: must be >= 0, got {getattr(ry, key)}")
        choice("wandb.mode", w.mode, ("offline", "online", "disabled"))
        if p:
            raise ConfigError(p)


# ---------------------------------------------------------------- helpers
def _hint(name: str, options, section: str | None = None) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    if not close:
        return ""
    return f" (did you mean '{section + '.' if section else ''}{close[0]}'?)"


def _apply_override(data: dict, item: str, problems: list[str]) -> None:
    if "=" not in item:
        problems.append(f"--set {item}: expected section.key=value")
        return
    key, _, raw = item.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        problems.append(f"--set {item}: key must be section.key, got '{key}'")
        return
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    section = data.get(parts[0])
    if not isinstance(section, dict):
        section = {}
        data[parts[0]] = section
    section[parts[1]] = value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp) -> Any:
    """Convert ``value`` to annotation ``tp`` or raise TypeError with a readable reason."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except TypeError as exc:
                errors.append(str(exc))
        raise TypeError(f"expected {' or '.join(_type_name(a) for a in args if a is not type(None))}, got {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, str) and "," in value:
            value = [yaml.safe_load(v) for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list of {_type_name(inner)}, got {value!r}")
        return [_coerce(v, inner) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads '2e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported type {tp}")
