"""Typed run configuration: YAML sections, ``--set section.key=value`` overrides, validation.

Every problem is reported as one line naming the key and what is wrong.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
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


# Every field: default, one-line doc and its bounds (ge/gt/le/lt or choices), checked generically by
# Config.validate. Integers without an upper bound get BIG. Rules between fields are in validate.
BIG = 10 ** 9  # upper bound of every count that names none: 10**30 epochs is a typo, not a plan


def opt(default, doc: str, **bounds):
    """A config field with its one-line ``doc`` and ``bounds`` (ge, gt, le, lt, choices)."""
    meta = {"doc": doc, **bounds}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


FLOATS = ("float64", "float32")


@dataclass
class RunConfig:
    name: str = opt("ray_run", "run folder name under output_dir (non-empty, no '/')")
    output_dir: str = opt("runs", "where runs are written (absolute, on shared storage, on a cluster)")
    seed: int = opt(0, "seeds systems (collector i uses seed + i), model init and minibatches", ge=0, le=2 ** 31 - 1)
    dtype: str = opt("float64", "physics precision", choices=FLOATS)
    checkpoint_interval: int = opt(10, "epochs between checkpoints (and the most a learner rebuild repeats)", ge=1)
    duration: Optional[float] = opt(None, "seconds; stop after the current epoch with a final checkpoint", gt=0)


@dataclass
class SystemConfig:
    ic: str = opt("kepler", "initial conditions: Kepler orbits, random N-body, a file or a mixture of families",
                  choices=("kepler", "random", "file", "mixture"))
    num_particles: int = opt(2, "bodies per system (kepler needs 2; a mixture pads with massless bodies)",
                             ge=2, le=10_000)
    dim: int = opt(2, "space dimension", choices=(2, 3))
    mass: Union[float, list[float]] = opt(1.0, "mass of every body, or one per body", gt=0)
    softening: float = opt(0.0, "Plummer softening length eps", ge=0)
    n_steps: int = opt(1, "leapfrog substeps per predicted dt", ge=1, le=1_000_000)
    e_min: float = opt(0.6, "smallest Kepler eccentricity", ge=0, lt=1)
    e_max: float = opt(0.95, "largest Kepler eccentricity", ge=0, lt=1)
    a_min: float = opt(0.8, "smallest Kepler semi-major axis", gt=0)
    a_max: float = opt(1.2, "largest Kepler semi-major axis", gt=0)
    pos_scale: float = opt(1.0, "position scale of random ICs", gt=0)
    vel_scale: float = opt(0.5, "velocity scale of random ICs", gt=0)
    ic_path: Optional[str] = opt(None, "IC file for ic 'file': .npy or text rows [m, x..., v...]")
    periods_per_orbit: float = opt(3.0, "a Kepler orbit restarts after this many periods", gt=0)
    apsis_starts: float = opt(0.0, "mixture: share of drawn Kepler orbits that start at an apsis (pericentre or "
                              "apocentre, equally) instead of a uniformly random time", ge=0, le=1)
    restart_after: float = opt(20.0, "a random, file or few_body system restarts after this many crossing times "
                                     "sqrt(L^3/M) (L: mean pair distance, M: total mass)", gt=0)
    mixture: dict[str, float] = opt({"binary": 0.4, "triple": 0.3, "planets": 0.2, "few_body": 0.1},
                                    "family -> weight of ic 'mixture' (binary, triple, planets, few_body, "
                                    "soft_few_body)", ge=0)


# features.timescale's choices (not aits.steprules.TIMESCALES, the classical timescales by name): 'nn' and
# aits.steprules.BLENDS (spelled out: importing aits.steprules would pull torch into this module; a test holds the
# two equal)
FEATURE_TIMESCALES = ("nn", "blend", "soft_blend", "prs_lean", "prs_point_lean")


@dataclass
class FeaturesConfig:
    history_len: int = opt(0, "K past states fed to the model", ge=0, le=1000)
    feature_type: str = opt("basic", "per-state features", choices=("basic", "rich", "delta_mag", "scale_free"))
    timescale: str = opt("nn", "scale_free features: 'nn' (tau = min sqrt(r/|a|)), 'blend' (a 9th feature "
                               "log(tau_prs / tau_nn); the factor scales sqrt(tau_nn tau_prs)) or 'soft_blend' (as blend, "
                               "leaning to tau_nn with the softening feature eps / (r + eps)) or 'prs_lean' (as "
                               "soft_blend with tau_nn^(1/4) tau_prs^(3/4) in place of the mean) or 'prs_point_lean' "
                               "(prs_lean's on an unsoftened pair, soft_blend's once the pair's softening is above "
                               "about 1 % of its separation)",
                         choices=FEATURE_TIMESCALES)
    radial_feature: str = opt("fraction", "scale_free feature 1: 'fraction', the squared cosine (r.u)^2 / (r^2 u^2) "
                                          "between the pair's separation and relative velocity, or 'energy', "
                                          "(r.u)^2 / (r mu), that cosine times u^2 r / mu (feature 0): the fraction "
                                          "swings from 1 to 0 and back within a few steps at the apocentre of a "
                                          "near-radial orbit, the energy stays near 0 there",
                              choices=("fraction", "energy"))
    normalize_inputs: str = opt("none", "input scales: none, from the ICs (auto) or L0..T0 (manual)",
                                choices=("none", "auto", "manual"))
    L0: float = opt(1.0, "manual length scale", gt=0)
    V0: float = opt(1.0, "manual velocity scale", gt=0)
    A0: float = opt(1.0, "manual acceleration scale", gt=0)
    T0: float = opt(1.0, "manual time scale", gt=0)


@dataclass
class ModelConfig:
    hidden_dims: list[int] = opt([200, 1000, 1000, 200], "MLP hidden widths (non-empty)", ge=1, le=65_536)
    activation: str = opt("tanh", "hidden activation", choices=("tanh", "relu", "silu", "sigmoid"))
    dropout: float = opt(0.0, "dropout after each hidden layer", ge=0, lt=1)
    fourier_scale: float = opt(0.0, "Gaussian Fourier feature scale; 0 = off", ge=0)
    fourier_dim: int = opt(16, "Fourier features when fourier_scale > 0", ge=1, le=65_536)
    init_dt: Optional[float] = opt(None, "dt an untrained model predicts (output bias); output 'dt' only", gt=0)
    output: str = opt("dt", "'dt': the model's dt; 'factor': dt = g(features) * min_i sqrt(r_i,nn / |a_i|)",
                      choices=("dt", "factor"))
    init_factor: Optional[float] = opt(None, "g an untrained factor model predicts (output bias)", gt=0)
    max_modulation: Optional[float] = opt(None, "bounded factor: g = init_factor * M^tanh(z) stays within a factor M "
                                                "of the classical rule it contains (and the recursion's step within M "
                                                "of h); null: the unbounded softplus factor", gt=1, le=1000)
    symmetric_iterations: int = opt(0, "0: explicit dt = h(start); k: time-symmetric (h(start) + h(end)) / 2 "
                                       "by k fixed-point iterations", ge=0, le=20)
    recursive: bool = opt(False, "explicit time-reversible step dt_n = h(z_n)^2 / dt_{n-1} (the first step h): "
                                 "one evaluation per step; factor output, scale_free features")
    recursion_clip: Optional[float] = opt(None, "the recursion's step stays within [h/c, h*c] (the alternating mode "
                                                "cannot grow past it); null: max_modulation's M, or no clip",
                                          gt=1, le=1000)
    dtype: Optional[str] = opt(None, "model precision; null = run.dtype (physics stays run.dtype)", choices=FLOATS)
    init_weights: Optional[str] = opt(None, "a checkpoint whose model weights a fresh run starts from (driver/"
                                            "distill.py's, or another run's, of the same model shape); null: "
                                            "the seeded initial weights")

    @property
    def step_clip(self) -> Optional[float]:
        """The recursion's clip c (dt within [h/c, h*c]): ``recursion_clip``, else ``max_modulation``, else None."""
        return self.recursion_clip if self.recursion_clip is not None else self.max_modulation


@dataclass
class TrainConfig:
    epochs: int = opt(1000, "epochs of collect + generalize", ge=1)
    energy_threshold: float = opt(2e-4, "a step is accepted when rel_dE is below it", gt=0)
    steps_per_epoch: int = opt(1, "accepted steps per system and epoch", ge=1)
    generalize_steps: int = opt(1000, "most generalize iterations per epoch", ge=0)
    generalize_batch_size: int = opt(512, "generalize minibatch size (drawn without replacement)", ge=1)
    generalize_min_samples: int = opt(2, "fewer samples: generalize is skipped", ge=0)
    E_lower: float = opt(1e-6, "lower edge of the loss band", gt=0)
    E_upper: float = opt(1e-4, "upper edge of the loss band (<= energy_threshold)", gt=0)
    lr: float = opt(1e-4, "Adam learning rate", gt=0)
    lr_final: Optional[float] = opt(None, "the learner's lr falls from lr to this along a half cosine over the "
                                         "epochs (epoch 1: lr, the last: lr_final); null: lr throughout", gt=0)
    weight_decay: float = opt(1e-2, "Adam weight decay", ge=0)
    max_retrain_steps: int = opt(0, "bound of the retrain loop of one step; 0 = unlimited", ge=0)
    generalize_capacity: int = opt(0, "samples the learner keeps across epochs; 0 = this epoch's only", ge=0)
    band_on_accept: bool = opt(False, "the band's lower edge also trains accepted steps (pushes small dt up)")
    passage: bool = opt(False, "each collector's gradient of the passage objective joins the learner's epoch "
                               "as one optimiser step (off: the seed)")
    passage_steps: int = opt(600, "steps of each passage rollout", ge=1, le=100_000)
    passage_batch: int = opt(16, "start states per collector and epoch for the passage rollouts", ge=1,
                             le=1_000_000)
    passage_anchor: float = opt(0.0, "weight of (mean log(dt / tau) - log init_factor)^2 in the passage objective: "
                                     "holds the overall step size at the classical eta (0: off)", ge=0)
    passage_anchor_rows: bool = opt(False, "the anchor holds each rollout's own mean log(dt / tau) at log "
                                           "init_factor, not only the batch's: the rule may reshape its steps "
                                           "within a system but not spend more or fewer of them on one family "
                                           "than the classical rule does (the objective's -2 log T credits a "
                                           "smaller level as if the error fell as dt^2)")
    passage_jumps: float = opt(0.0, "weight of the mean over the rollouts and their steps of (log(dt_k / tau_k) - "
                                    "log(dt_(k-1) / tau_(k-1)))^2: how far the step jumps against its timescale from "
                                    "one step to the next, the recursion's alternating mode or a factor that jumps "
                                    "where the pair setting tau changes (0: off)", ge=0)
    passage_factor_jumps: float = opt(0.0, "weight of the mean over the rollouts of the sum over their steps of "
                                           "max(0, |log g_k - log g_(k-1)| - passage_factor_tolerance)^2, g = h / tau "
                                           "the rule's factor before the recursion: a factor that jumps where its "
                                           "features jump (the pair setting tau changes); the alternating mode and "
                                           "a factor changing smoothly along an orbit do not count (0: off)", ge=0)
    passage_factor_tolerance: float = opt(0.05, "the change of log g from one step to the next that the factor "
                                                "jumps term lets pass free (a smooth factor changes by a few "
                                                "hundredths a step at ~100 steps per tau)", ge=0)
    passage_hinge: float = opt(0.0, "weight of the mean over the rollouts of max(0, objective - the classical "
                                     "rule's objective from the same start): presses hardest where the rule does "
                                     "worse than the classical one it contains (0: off; a forward rollout more)",
                               ge=0)
    passage_hinge_timescales: list[str] = opt([], "timescales (features.timescale's choices) whose classical "
                                                  "recursions at model.init_factor the hinge also compares each "
                                                  "rollout with: its excess over the best of them and its own "
                                                  "classical rule counts (a forward rollout more each; [] : its "
                                                  "own only)")
    passage_measure: str = opt("max", "the passage objective's energy error: max |E_k - E_0| / |E_0| (max), or the "
                                      "band (max E - min E) / |E_0| over the rollout, which does not depend on where "
                                      "in the oscillation the rollout starts (band)", choices=("max", "band"))
    passage_apsis: float = opt(0.0, "share of each collector's passage rollouts that start from a fresh draw of the "
                                    "mixture with every Kepler orbit at an apsis (pericentre or apocentre), where "
                                    "published initial conditions start, instead of an accepted state (0: off)",
                               ge=0, le=1)
    passage_apsis_families: list[str] = opt([], "the families whose rollouts passage_apsis moves: a share of "
                                                "the rollouts from accepted states of these families each start "
                                                "from a fresh draw of its own family at an apsis; the others "
                                                "start from accepted states ([]: every family, fresh mixture "
                                                "draws)")
    passage_family_weights: dict[str, float] = opt({}, "each family's weight in the passage objective's mean over "
                                                       "the rollouts, by the family of its start state (a family "
                                                       "not named: 1; {}: the plain mean)", ge=0)
    passage_phase: float = opt(0.0, "weight of the phase term in the passage objective: log of the rollout's "
                                    "position error at its end time against a finer reference from the same "
                                    "start (each body's error over its nearest neighbour's distance) - 3 log T; "
                                    "the energy error does not see a step rule that runs ahead or behind on "
                                    "its orbit (0: off; a reference rollout more, without grad)", ge=0)
    passage_phase_refine: float = opt(4.0, "the phase term's reference takes steps of model.init_factor / this "
                                           "times the timescale: its error is ~this^2 below the classical rule's",
                                      ge=1)
    passage_phase_hinge: bool = opt(False, "the phase term counts only what a rollout's term exceeds the classical "
                                           "rule's from the same start (that rule rolled out and referenced "
                                           "too, without grad): the rule may not drift further than the "
                                           "classical rule it contains, and is not pushed to drift less")
    compile_rollout: bool = opt(False, "run each passage rollout step through torch.compile: ~6x faster on a CPU "
                                       "after a ~40 s compile per process; rounding-level differences from eager")


@dataclass
class RayConfig:
    address: str = opt("", "'' starts a local Ray (or joins ray job submit's); 'auto' or host:port joins one")
    num_collectors: int = opt(2, "collector actors", ge=1, le=100_000)
    systems_per_collector: int = opt(1, "B systems stepped at once by each collector", ge=1, le=1_000_000)
    inprocess: bool = opt(False, "run the actor classes in the driver process, without Ray")
    learner_gpus: float = opt(0.0, "GPUs for the learner (used when present)", ge=0)
    collector_cpus: float = opt(1.0, "CPUs reserved per collector", ge=0)
    learner_cpus: float = opt(1.0, "CPUs reserved for the learner (its torch threads: max(1, this))", ge=0)
    pipeline: bool = opt(False, "collect epoch e+1 with the weights of epoch e-1 while the learner trains")


@dataclass
class WandbConfig:
    mode: str = opt("offline", "W&B: files under the run folder, online, or off",
                    choices=("offline", "online", "disabled"))
    project: str = opt("AITimeStepper", "W&B project")
    entity: Optional[str] = opt(None, "W&B entity (team or user)")
    name: Optional[str] = opt(None, "W&B run name; null = run.name")
    tags: list[str] = opt([], "W&B tags")


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
        try:
            data = yaml.safe_load(read_text_file(path, "config file"))
        except ValueError as exc:
            raise ConfigError([str(exc)]) from None
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
        ic = s.ic if s.ic != "mixture" else "mixture(" + " ".join(f"{k}:{w:g}" for k, w in s.mixture.items()) + ")"
        return (f"{ic} N={s.num_particles} D={s.dim} | features {f.feature_type}"
                f"{'' if f.timescale == 'nn' else '/' + f.timescale} K={f.history_len} "
                f"norm={f.normalize_inputs} | model {m.hidden_dims} {m.activation} | "
                f"thr={t.energy_threshold:g} band=[{t.E_lower:g},{t.E_upper:g}] lr={t.lr:g} "
                f"epochs={t.epochs} steps/epoch={t.steps_per_epoch}")

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        """Every field against its declared bounds, then the rules between fields."""
        p = [line for sec in dataclasses.fields(self) for line in _check_section(sec.name, getattr(self, sec.name))]
        r, s, f, m, t = self.run, self.system, self.features, self.model, self.train
        if not r.name or "/" in r.name:
            p.append(f"run.name: '{r.name}' must be a non-empty name without '/'")
        if isinstance(s.mass, list) and len(s.mass) not in (1, s.num_particles):
            p.append(f"system.mass: {len(s.mass)} values for {s.num_particles} particles")
        if s.ic == "kepler" and s.num_particles != 2:
            p.append(f"system.num_particles: kepler needs exactly 2 bodies, got {s.num_particles}")
        p += _mixture_problems(s)
        if s.e_min > s.e_max:
            p.append(f"system.e_min: {s.e_min} is above system.e_max {s.e_max}")
        if s.a_min > s.a_max:
            p.append(f"system.a_min: {s.a_min} is above system.a_max {s.a_max}")
        if s.ic == "file":
            problem = _ic_file_problem(s) if s.ic_path else "required when system.ic is 'file'"
            if problem:
                p.append(f"system.ic_path: {problem}")
        if f.feature_type == "delta_mag" and f.history_len < 1:
            p.append(f"features.feature_type: delta_mag needs features.history_len >= 1, got {f.history_len}")
        if f.timescale != "nn" and f.feature_type != "scale_free":
            p.append(f"features.timescale: {f.timescale!r} needs features.feature_type scale_free, got {f.feature_type!r}")
        if f.radial_feature != "fraction" and (f.feature_type != "scale_free" or m.output != "factor"):
            p.append(f"features.radial_feature: {f.radial_feature!r} needs features.feature_type scale_free and "
                     f"model.output factor, got {f.feature_type!r} and {m.output!r}")
        if f.feature_type == "scale_free" and f.history_len != 0:
            p.append(f"features.history_len: scale_free features use the current state only, got {f.history_len}")
        if m.symmetric_iterations and not (m.output == "factor" and f.feature_type == "scale_free"):
            p.append("model.symmetric_iterations: the time-symmetric step needs model.output factor and "
                     "features.feature_type scale_free (inputs even under time reversal)")
        if m.recursive and not (m.output == "factor" and f.feature_type == "scale_free"):
            p.append("model.recursive: the step recursion needs model.output factor and "
                     "features.feature_type scale_free (inputs even under time reversal)")
        if m.max_modulation is not None and not (m.output == "factor" and m.init_factor is not None):
            p.append("model.max_modulation: the bounded factor modulates a classical rule: it needs model.output "
                     "factor and model.init_factor (the classical eta it contains)")
        if m.recursive and m.symmetric_iterations:
            p.append(f"model.recursive: pick one step rule; symmetric_iterations is {m.symmetric_iterations}, "
                     "set it to 0 for the step recursion")
        if t.passage_hinge and (m.output != "factor" or m.max_modulation is None):
            p.append("train.passage_hinge: the classical rule it compares with is the bounded factor's eta0; "
                     "set model.output factor and model.max_modulation")
        for ts in t.passage_hinge_timescales:
            if ts not in FEATURE_TIMESCALES:
                p.append(f"train.passage_hinge_timescales: unknown timescale {ts!r}{_hint(ts, FEATURE_TIMESCALES)}; "
                         f"timescales: {', '.join(FEATURE_TIMESCALES)}")
        if t.passage_hinge_timescales and not (t.passage_hinge and f.feature_type == "scale_free"):
            p.append("train.passage_hinge_timescales: the hinge compares with these classical rules; set "
                     "train.passage_hinge > 0 (and features.feature_type scale_free)")
        if t.passage_anchor_rows and not t.passage_anchor:
            p.append("train.passage_anchor_rows: holds each rollout's level with the anchor's weight; set "
                     "train.passage_anchor > 0")
        if t.passage_phase and (m.output != "factor" or m.init_factor is None):
            p.append("train.passage_phase: the reference steps at model.init_factor / train.passage_phase_refine "
                     "times the timescale; set model.output factor and model.init_factor")
        if t.passage_phase_hinge and not (t.passage_phase and m.max_modulation is not None):
            p.append("train.passage_phase_hinge: compares the phase term with the bounded factor's eta0; set "
                     "train.passage_phase > 0 and model.max_modulation")
        if t.passage_anchor and m.init_factor is None:
            p.append("train.passage_anchor: the anchor holds the step level at model.init_factor; set it")
        if s.ic == "mixture" and s.mixture.get("soft_few_body", 0) > 0 and f.feature_type != "scale_free":
            p.append("system.mixture: soft_few_body (each system its own softening) needs features.feature_type "
                     f"scale_free, got '{f.feature_type}'")
        if t.passage_apsis and s.ic != "mixture":
            p.append(f"train.passage_apsis: apsis starts are drawn from the training mixture; system.ic is '{s.ic}', "
                     "set it to mixture or passage_apsis to 0")
        p.extend(_family_key_problems(t, s))
        if t.passage and f.feature_type != "scale_free":
            p.append("train.passage: the passage rollout needs features.feature_type scale_free "
                     f"(features of the current state only), got {f.feature_type}")
        if not m.hidden_dims:
            p.append("model.hidden_dims: must be a non-empty list of positive ints, got []")
        if t.E_lower >= t.E_upper:
            p.append(f"train.E_lower: {t.E_lower:g} must be below train.E_upper {t.E_upper:g}")
        if t.E_upper > t.energy_threshold > 0:
            p.append(f"train.E_upper: {t.E_upper:g} exceeds train.energy_threshold {t.energy_threshold:g}; "
                     "a rejected step could have zero loss and retrain for ever")
        if p:
            raise ConfigError(p)


def _family_key_problems(t: "TrainConfig", s: "SystemConfig") -> list[str]:
    """One line per unknown family in ``train.passage_apsis_families`` and ``train.passage_family_weights``, and
    for weights that leave no family the mixture draws a positive weight."""
    from .families import FAMILIES

    out = [f"train.{key}: unknown family '{k}'{_hint(k, FAMILIES)}; families: {', '.join(FAMILIES)}"
           for key in ("passage_apsis_families", "passage_family_weights") for k in getattr(t, key)
           if k not in FAMILIES]
    if t.passage_family_weights and s.ic != "mixture":
        out.append(f"train.passage_family_weights: weighs the families of system.ic mixture; system.ic is "
                   f"'{s.ic}', set it to mixture or the weights to {{}}")
    drawn = [k for k, w in s.mixture.items() if w > 0] if s.ic == "mixture" else []
    if t.passage_family_weights and drawn and not any(t.passage_family_weights.get(k, 1.0) > 0 for k in drawn):
        out.append(f"train.passage_family_weights: every family the mixture draws has weight 0, got "
                   f"{t.passage_family_weights!r}")
    return out


def _mixture_problems(s: "SystemConfig") -> list[str]:
    """One line per problem of ``system.mixture`` (any ic: an unknown family is a typo anywhere) and of
    ``num_particles`` for the families an ic 'mixture' draws."""
    from .families import FAMILIES, FAMILY_BODIES

    out = [f"system.mixture: unknown family '{k}'{_hint(k, FAMILIES)}; families: {', '.join(FAMILIES)}"
           for k in s.mixture if k not in FAMILIES]
    drawn = [k for k, w in s.mixture.items() if k in FAMILIES and w > 0]
    valid = all(math.isfinite(w) and w >= 0 for w in s.mixture.values())  # else the bounds check names it
    if s.ic == "mixture" and not out and valid and not drawn:
        out.append(f"system.mixture: no family has a positive weight, got {s.mixture!r}")
    if s.ic == "mixture" and drawn:
        need = max(drawn, key=FAMILY_BODIES.get)
        if s.num_particles < FAMILY_BODIES[need]:
            out.append(f"system.num_particles: mixture family '{need}' needs {FAMILY_BODIES[need]} bodies, "
                       f"got {s.num_particles}")
    return out


# ---------------------------------------------------------------- generic checks
def _check_section(name: str, section) -> list[str]:
    """One line per field of ``section`` outside its declared bounds."""
    out = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        values = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        problem = next((q for q in (_check_value(v, f.metadata) for v in values) if q), None)
        if problem:
            text, shown = problem
            every = "every value " if isinstance(value, (list, dict)) else ""
            out.append(f"{name}.{f.name}: {every}{text}" + (f", got {value!r}" if shown else ""))
    return out


def _check_value(v, meta) -> tuple[str, bool] | None:
    """(what is wrong with one value under the bounds ``meta``, whether to append the value), or None."""
    if v is None:
        return None
    choices = meta.get("choices")
    if choices is not None:
        shown = f"'{v}'" if isinstance(v, str) else str(v)
        return None if v in choices else (f"{shown} is not one of {', '.join(map(str, choices))}", False)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return "must be a finite number", True
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    # a float range reads as a range ("lie in [0, 1)"); a count names the side it broke ("be >= 1")
    two_sided = isinstance(v, float) and (ge is not None or gt is not None) and (le is not None or lt is not None)
    if isinstance(v, int) and le is None and lt is None:
        le = BIG
    low_ok = (ge is None or v >= ge) and (gt is None or v > gt)
    if low_ok and (le is None or v <= le) and (lt is None or v < lt):
        return None
    if two_sided:
        return f"must {_bounds_text(ge, gt, le, lt)}", True
    return f"must {_bounds_text(ge, gt, None, None) if not low_ok else _bounds_text(None, None, le, lt)}", True


def _bounds_text(ge, gt, le, lt) -> str:
    lo, hi = _num(ge if ge is not None else gt), _num(le if le is not None else lt)
    if lo is not None and hi is not None:
        return f"lie in {'[' if ge is not None else '('}{lo}, {hi}{']' if le is not None else ')'}"
    if lo is not None:
        return f"be {'>=' if ge is not None else '>'} {lo}"
    return f"be {'<=' if le is not None else '<'} {hi}"


def _num(x) -> str | None:
    return None if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of a file the user named, or ValueError with one line saying why it cannot be read."""
    if not path.exists():
        raise ValueError(f"{what} {path}: not found")
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a directory, not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read ({exc.strerror or type(exc).__name__})") from None


def read_text_file(path: Path, what: str) -> str:
    """The text of a file the user named, or ValueError with one line (unreadable, binary, ...)."""
    data = read_bytes(path, what)
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path}: not a text file (binary data)") from None


def _ic_file_problem(s: "SystemConfig") -> str | None:
    """Why the IC file cannot start a run (unreadable, wrong shape, coincident bodies, zero energy)."""
    from .physics import load_ic_file

    path = Path(s.ic_path)
    try:
        (read_bytes if path.suffix == ".npy" else read_text_file)(path, "IC file")
        m, x, v = load_ic_file(path)
    except ValueError as exc:
        return str(exc)
    if x.shape != (s.num_particles, s.dim):
        return f"file {path} holds N={x.shape[0]} D={x.shape[1]}, config says N={s.num_particles} D={s.dim}"
    r = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)
    i, j = np.triu_indices(len(m), 1)
    if s.softening == 0 and (r[i, j] == 0).any():
        k = int(np.argmin(r[i, j]))
        return f"file {path}: bodies {i[k]} and {j[k]} coincide (infinite force without system.softening)"
    kinetic = 0.5 * float(np.sum(m[:, None] * v ** 2))
    potential = -float(np.sum(m[i] * m[j] / np.sqrt(r[i, j] ** 2 + s.softening ** 2)))
    energy = kinetic + potential
    if not math.isfinite(energy) or abs(energy) <= 1e-12 * (kinetic + abs(potential)):
        return (f"file {path}: total energy is zero or not finite (E = {energy:.3g}); the relative energy "
                "error that accepts a step is undefined")
    return None


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
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping of {_type_name(key_tp)} to {_type_name(value_tp)}, got {value!r}")
        return {_coerce(k, key_tp): _coerce(v, value_tp) for k, v in value.items()}
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
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2 ** 1000:
            return math.inf if value > 0 else -math.inf  # beyond float range: the bounds check names it
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
