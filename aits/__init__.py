"""AITimeStepper core library: physics, features, dt model, config, checkpoints and the
two-phase training algorithm. Imports neither Ray nor W&B."""
from .checkpoint import (CheckpointError, build_payload, checkpoint_path, config_from_checkpoint,
                         latest_checkpoint, load_checkpoint, save_checkpoint)
from .config import Config, ConfigError
from .features import HistoryBuffer, NormScales, build_features, feature_dim
from .model import DtModel
from .two_phase import (Orbit, Samples, Stepper, auto_norm_scales, band_loss, collect, evaluate, generalize,
                        make_optimizer, predict_dt, retrain_until_accepted)

__all__ = [
    "CheckpointError", "Config", "ConfigError", "DtModel", "HistoryBuffer", "NormScales", "Orbit", "Samples",
    "Stepper", "auto_norm_scales", "band_loss", "build_features", "build_payload", "checkpoint_path",
    "collect", "config_from_checkpoint", "evaluate", "feature_dim", "generalize", "latest_checkpoint",
    "load_checkpoint", "make_optimizer", "predict_dt", "retrain_until_accepted", "save_checkpoint",
]
