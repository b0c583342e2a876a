"""Checkpoints: the seed's key contract, atomic writes, clear errors on load."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import Config, ConfigError

CONTRACT_KEYS = ("epoch", "model_state_dict", "model_state", "optimizer_state_dict", "optimizer_state",
                 "loss", "info", "logs", "extra", "config", "config_summary", "history_len",
                 "feature_type", "dtype")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or lacks required keys."""


def checkpoint_path(run_dir, epoch: int) -> Path:
    return Path(run_dir) / "model" / f"model_epoch_{epoch:04d}.pt"


def build_payload(epoch: int, model_state: dict, optimizer_state: dict | None, config: Config,
                  norm_scales: dict, loss: float | None = None, info: dict | None = None,
                  logs: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    """The seed's checkpoint contract plus ``norm_scales``; resume state goes in ``extra``."""
    return {
        "epoch": epoch,
        "model_state_dict": model_state,
        "model_state": model_state,
        "optimizer_state_dict": optimizer_state,
        "optimizer_state": optimizer_state,
        "loss": loss,
        "info": info or {},
        "logs": logs or {},
        "extra": extra or {},
        "config": config.to_dict(),
        "config_summary": config.summary(),
        "history_len": config.features.history_len,
        "feature_type": config.features.feature_type,
        "dtype": config.run.dtype,
        "norm_scales": dict(norm_scales),
    }


def save_checkpoint(path, payload: dict) -> Path:
    """Write atomically: temporary file in the same folder, flush, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU. Raises CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"checkpoint {path}: unreadable or corrupt ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path}: not a checkpoint dictionary")
    missing = [k for k in ("epoch", "model_state_dict", "config") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing keys {', '.join(missing)}")
    return ckpt


def config_from_checkpoint(ckpt: dict, overrides: list[str] | None = None) -> Config:
    """The run's Config as stored in a checkpoint (optionally with ``--set`` overrides)."""
    try:
        return Config.from_dict(ckpt["config"], overrides)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint config unreadable: {exc}") from None


def norm_scales_of(ckpt: dict, cfg: Config | None = None, path=None):
    """The feature normalisation scales a checkpoint's model was trained with: one rule for every loader.

    Parameters
    ----------
    ckpt : dict
        A checkpoint dictionary (:func:`load_checkpoint`).
    cfg : Config, optional
        Its config (default: the one it stores).
    path : str or Path, optional
        The checkpoint's file, named in errors.

    Returns
    -------
    NormScales
        The stored ``norm_scales`` (L0, V0, A0, T0: length, speed, acceleration, time) when present;
        else recomputed exactly as training does (:func:`aits.norm.auto_norm_scales`: from the run's
        reference initial conditions for ``features.normalize_inputs: auto``, ``features.L0``..``T0``
        for ``manual``, unit scales for ``none``).

    Raises
    ------
    CheckpointError
        Stored scales that are not four positive finite numbers.
    """
    import math

    from .features import NormScales
    from .norm import auto_norm_scales

    stored = ckpt.get("norm_scales")
    if not stored:  # checkpoints written before norm_scales was stored
        return auto_norm_scales(cfg or Config.from_dict(ckpt["config"]))
    try:
        vals = {k: float(stored[k]) for k in ("L0", "V0", "A0", "T0")}
    except (KeyError, TypeError, ValueError):
        vals = None
    if vals is None or not all(math.isfinite(val) and val > 0 for val in vals.values()):
        where = f"checkpoint {path}" if path else "checkpoint"
        raise CheckpointError(f"{where}: norm_scales must hold positive numbers L0, V0, A0, T0, "
                              f"got {str(stored)[:120]}")
    return NormScales(**vals)


def fit_weights(model: torch.nn.Module, ckpt: dict, path=None) -> torch.nn.Module:
    """Load a checkpoint's ``model_state_dict`` into ``model`` (built from its config); returns ``model``.

    Raises
    ------
    CheckpointError
        Weights that do not fit the model the config describes, in one line naming the file and the
        first mismatch (e.g. ``size mismatch for net.0.weight ...``).
    """
    try:
        model.load_state_dict(ckpt["model_state_dict"])
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        why = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else lines[0]
        where = f"checkpoint {path}" if path else "checkpoint"
        raise CheckpointError(f"{where}: weights do not fit the model its config describes ({why[:200]})") from None
    return model


def latest_checkpoint(run_dir) -> Path | None:
    """Newest ``model_epoch_*.pt`` of a run folder (by epoch number), or None."""
    files = sorted((Path(run_dir) / "model").glob("model_epoch_*.pt"))
    return files[-1] if files else None


def check_training_state(ckpt: dict, cfg: Config, path) -> None:
    """CheckpointError unless the checkpoint's model, optimiser, kept samples and collector states load
    under ``cfg`` in this version (an older layout or another program's file fails here, in one
    line, before anything is started or written)."""
    from .model import build_model
    from .samples import Samples
    from .stepper import make_optimizer
    from .systems import Systems

    extra = ckpt["extra"]
    try:
        model = build_model(cfg)
        model.load_state_dict(ckpt["model_state_dict"])
        make_optimizer(model, cfg).load_state_dict(ckpt["optimizer_state_dict"])
        learner = extra["learner"]
        for key in ("rng", "torch_rng"):
            if key not in learner:
                raise KeyError(f"extra.learner.{key}")
        if "kept" not in learner and "replay" not in learner:  # "replay": before the rename
            raise KeyError("extra.learner.kept")
        kept = learner.get("kept", learner.get("replay"))
        if kept is not None:
            Samples(**kept)
        for i, st in enumerate(extra["collectors"]):
            if st.get("index") != i or "torch_rng" not in st:
                raise ValueError(f"collector state {i} is not collector {i}'s")
            systems = Systems.for_collector(cfg, i, cfg.ray.systems_per_collector)
            systems.load_state_dict(st["systems"] if "systems" in st else st["orbit"])
    except Exception as exc:  # noqa: BLE001 - whatever does not fit is one line
        what = " ".join(line.strip() for line in str(exc).splitlines())[:200]
        raise CheckpointError(f"checkpoint {path}: its training state does not fit this version and config "
                              f"({type(exc).__name__}: {what})") from None
