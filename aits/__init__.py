"""AITimeStepper core library: physics, features, dt model, config, checkpoints and the
two-phase training algorithm (the seed's names: ``collect_trajectory``, the collect phase;
``generalize_on_trajectory``, the generalize phase). Imports neither Ray nor W&B."""
from .checkpoint import (CheckpointError, build_payload, checkpoint_path, config_from_checkpoint,
                         latest_checkpoint, load_checkpoint, save_checkpoint)
from .collect import collect_trajectory, retrain_until_accepted
from .config import Config, ConfigError
from .features import HistoryBuffer, NormScales, build_features, feature_dim
from .generalize import generalize_on_trajectory
from .model import DtModel, build_model
from .norm import auto_norm_scales
from .passage import apply_passage, passage_gradient
from .rule import load_rule
from .samples import Samples, StateBatch
from .stepper import Stepper, band_loss, evaluate, learning_rate, make_optimizer, optimizer_step, predict_dt
from .systems import Orbit

__all__ = [
    "CheckpointError", "Config", "ConfigError", "DtModel", "HistoryBuffer", "NormScales", "Orbit", "Samples",
    "StateBatch", "Stepper", "apply_passage", "auto_norm_scales", "band_loss", "build_features", "build_model", "build_payload", "checkpoint_path",
    "collect_trajectory", "config_from_checkpoint", "evaluate", "feature_dim", "generalize_on_trajectory",
    "latest_checkpoint", "learning_rate", "load_checkpoint", "load_rule", "make_optimizer", "optimizer_step", "passage_gradient", "predict_dt", "retrain_until_accepted",
    "save_checkpoint",
]
