"""Export a checkpoint's learned step rule as a portable JSON file (docs/RULE.md).

    aits-export --checkpoint runs/<name>/model/model_epoch_XXXX.pt --out rule.json

The file holds everything a short implementation in any language needs: the weights (float64,
full precision), the activation, the Fourier projection, the eight scale-free features with
their formulas and constants, the timescale, the output transform (with ``features.timescale: blend`` a ninth feature and the
geometric-mean timescale), the step form (explicit,
symmetric with k, recursive) with its constants, test vectors and the checkpoint's provenance.
``examples/rule_numpy.py`` is such an implementation (numpy, reading only the JSON). Seed-mode
checkpoints (``model.output: dt``, history features) are refused: their rule is not scale-free
and depends on the history and normalisation scales.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from aits import CheckpointError, ConfigError, load_checkpoint, load_rule
from aits.features import TAU_RATIO_CAP, scale_free_numpy
from aits.steprules import BLENDS, PRS_A_FLOOR, SOFT_BLENDS, soft_blend_exponent
from aits.model import SOFTPLUS_THRESHOLD
from aits.physics import kepler_ic
from aits.rule import Rule
from driver.evaluate import write_atomic

FORMAT, FORMAT_VERSION = "aits-rule", 1

# The scale-free features of aits.features (docs/DESIGN.md §2.3b), in the model's input order.
FEATURES = [
    ("kinetic_over_potential", "u^2 * r / mu"),
    ("cos2_separation_velocity", "(rvec . uvec)^2 / (r^2 * u^2 + 1e-300)"),
    ("acceleration_over_pair", "|a_i*| * r^2 / m_j*"),
    ("log_tau_others_ratio", "clip(log(tau_others / tau), 0, tau_ratio_cap); tau_ratio_cap when N = 2"),
    ("pair_mass_fraction", "mu / M"),
    ("pair_mass_ratio", "min(m_i*, m_j*) / max(m_i*, m_j*)"),
    ("softening_over_separation", "eps / (r + eps)"),
    ("log_separation_over_mean", "log(r / L); 0 when N = 2"),
]
# feature 1 with features.radial_feature 'energy': the fraction above times feature 0
RADIAL_ENERGY = ("radial_kinetic_over_potential", "(rvec . uvec)^2 / (r * mu)")
DEFINITIONS = {
    "a_i": "accelerations (input): a_i = sum_{j != i} m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^(3/2), G = 1",
    "r_i_nn": "distance from body i to its nearest other body (unsoftened); j_nn(i) that body, the first "
              "index on ties",
    "tau_i": "sqrt(r_i_nn / max(|a_i|, 1e-300))",
    "i*": "the body with the smallest tau_i (the first index on ties); j* = j_nn(i*)",
    "tau": "tau_i* = min_i tau_i (the timescale)",
    "rvec": "x_j* - x_i*; r = |rvec|",
    "uvec": "v_j* - v_i*; u^2 = uvec . uvec",
    "mu": "m_i* + m_j*",
    "M": "sum of all masses",
    "tau_others": "min of tau_i over the bodies other than i* and j* (N > 2)",
    "L": "mean distance over the ordered pairs i != j (unsoftened)",
    "log": "natural logarithm",
}
# timescale 'blend' or 'soft_blend' (features.timescale): a 9th feature and the geometric-mean timescale (soft_blend:
# leaning to tau with the softening feature).
BLEND_FEATURE = ("log_prs_over_nn", "clip(log(tau_prs / tau), -tau_ratio_cap, tau_ratio_cap)")
BLEND_DEFINITIONS = {
    "jerk_snap": "per body i, the sums over j != i of the pair terms, with r = x_j - x_i, u = v_j - v_i, "
                 "A = a_j - a_i, R2 = |r|^2 + eps^2, w = m_j / R2^(3/2), alpha = r.u / R2, "
                 "beta = (|u|^2 + r.A) / R2 + alpha^2: a_ij = w r, j_ij = w u - 3 alpha a_ij, "
                 "s_ij = w A - 6 alpha j_ij - 3 beta a_ij",
    "tau_prs": "sqrt(2 |a_i*|^2 / den), den = |j_i*|^2 + sqrt(|a_i*|^2 |s_i*|^2) (IAS15's 2024 timescale of "
               "body i*, Pham, Rein & Spiegel 2024, eq. 16); tau_prs = tau when |a_i*|^2 <= prs_a_floor^2 * "
               "max_k |a_k|^2 or den = 0",
    "tau_blend": "sqrt(tau * tau_prs): the timescale h scales with (timescale 'blend')",
    "tau_soft_blend": f"tau * (tau_prs / tau)^({soft_blend_exponent('soft_blend', 'f6')}), f6 = eps / (r + eps) "
                      "(feature 6): the timescale h scales with (timescale 'soft_blend'); tau_blend on an unsoftened "
                      "system",
    "tau_prs_lean": f"tau * (tau_prs / tau)^({soft_blend_exponent('prs_lean', 'f6')}), f6 = eps / (r + eps) "
                    "(feature 6): the timescale h scales with (timescale 'prs_lean'); tau^(1/4) tau_prs^(3/4) on an "
                    "unsoftened system",
    "tau_prs_point_lean": f"tau * (tau_prs / tau)^({soft_blend_exponent('prs_point_lean', 'f6')}), f6 = eps / (r + "
                          "eps) (feature 6): the timescale h scales with (timescale 'prs_point_lean'); tau_prs_lean "
                          "on an unsoftened system, tau_soft_blend to within 1e-4 of the exponent from f6 = 0.1 on",
}
ACTIVATIONS = {"tanh": "tanh(y)", "relu": "max(y, 0)", "silu": "y / (1 + exp(-y))",
               "sigmoid": "1 / (1 + exp(-y))"}
MODES = {
    "explicit": "dt = h(z): z the state (x, v, a(x), m) at the start of the step",
    "recursive": "dt_0 = h(z_0); dt_n = h(z_n)^2 / dt_(n-1) (dt_(n-1): the step taken into z_n)",
    "symmetric": "dt = h(z); repeat iterations times: (x1, v1, a1) = trial step of dt from z with the integrator "
                 "(not accepted), dt = (h(z) + h(x1, v1, a1, m)) / 2; then the step of dt",
}


class InputError(Exception):
    """Bad user input; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise InputError(message)


def parse_args(argv):
    p = _Parser(prog="export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, metavar="CK", help="training checkpoint (model_epoch_XXXX.pt)")
    p.add_argument("--out", required=True, metavar="FILE", help="the JSON file to write (e.g. rule.json)")
    p.add_argument("--softening", type=float, metavar="EPS",
                   help="Plummer softening of the target systems (default: the training config's)")
    args = p.parse_args(argv)
    if args.softening is not None and not (math.isfinite(args.softening) and args.softening >= 0):
        raise InputError(f"--softening: must be finite and >= 0, got {args.softening}")
    return args


def output_spec(rule: Rule) -> dict:
    """The output transform, network output z -> step function h, as a named kind (one branch per
    ``model.output`` that has a step function)."""
    kind = rule.cfg.model.output
    if kind == "factor" and rule.cfg.model.max_modulation is not None:
        spec = {"kind": "bounded_factor", "eta0": float(rule.cfg.model.init_factor),
                "max_modulation": float(rule.cfg.model.max_modulation),
                "formula": "g = eta0 * max_modulation ** tanh(z); h = g * tau", "range_check": None}
        if rule.ranges is not None:  # aits/ranges.py: the modulation pulled back outside the training box
            r = rule.ranges
            spec["formula"] = "g = eta0 * max_modulation ** (w * tanh(z)); h = g * tau"
            spec["range_check"] = {
                "lo": r.lo.tolist(), "hi": r.hi.tolist(), "delta": r.delta.tolist(), "samples": r.samples,
                "formula": "d_k = max(lo_k - f_k, 0) + max(f_k - hi_k, 0); w = exp(-sum_k (d_k / delta_k)^2)"}
        return spec
    if kind == "factor":
        return {"kind": "softplus_factor", "softplus_threshold": SOFTPLUS_THRESHOLD, "offset": 1e-12,
                "formula": "g = (z if z > softplus_threshold else log(1 + exp(z))) + offset; h = g * tau"}
    raise InputError(f"model.output {kind!r}: no exported form for this output mode")


def mode_spec(rule: Rule) -> dict:
    spec = {"kind": rule.mode, "formula": MODES[rule.mode]}
    if rule.mode == "symmetric":
        spec["iterations"] = rule.k
    if rule.mode == "recursive":
        clip = rule.cfg.model.step_clip
        spec["clip"] = None if clip is None else float(clip)
        spec["clip_formula"] = "with clip: dt = min(max(dt, h / clip), h * clip)"
    return spec


def network_spec(rule: Rule) -> dict:
    """The MLP exactly as the library's numpy inference holds it (``aits.model.NumpyMLP``), float64."""
    mlp = _mlp(rule)
    act = rule.cfg.model.activation
    layers = [{"W": w.T.tolist(), "b": b.tolist(), "shape": [int(w.shape[1]), int(w.shape[0])],
               "activation": i < len(mlp.layers) - 1} for i, (w, b) in enumerate(mlp.layers)]
    fourier = None if mlp.proj is None else {
        "P": mlp.proj.tolist(), "shape": list(mlp.proj.shape),
        "formula": "q = 2 * pi * (f @ P), P [n_features][fourier_dim]; input = concat(sin(q), cos(q))"}
    return {"input": "the feature vector f, in the order of features.list", "fourier": fourier,
            "activation": act, "activation_formula": ACTIVATIONS[act],
            "layers": layers,
            "formula": "y = W @ input + b per layer (W [out][in]); the activation after every layer with "
                       "activation true; the last layer has one output z"}


def _mlp(rule: Rule):
    """The numpy MLP inside the rule's step function (``aits.policy.FactorStep.mlp``)."""
    mlp = getattr(rule._h, "mlp", None)
    if mlp is None or not hasattr(mlp, "layers"):
        raise InputError(f"step function {type(rule._h).__name__}: no numpy MLP to export")
    return mlp


def test_vectors(rule: Rule) -> list[dict]:
    """States with their features, tau, g and h from the library, for checking an implementation."""
    rng = np.random.default_rng(2024)
    states = [("kepler pair at e = 0.5, a = 1, pericentre", *kepler_ic(0.5, 1.0)[:3]),
              ("four bodies in 3-D", rng.uniform(0.5, 2.0, 4), rng.normal(size=(4, 3)), rng.normal(size=(4, 3)) * 0.5)]
    out = []
    for name, m, x, v in states:
        a = rule.accelerations(x, m)
        feats, tau = scale_free_numpy(x, v, a, m, rule.eps, rule.cfg.features.timescale,
                                      radial=rule.cfg.features.radial_feature)
        h = rule.h(x, v, a, m)
        out.append({"name": name, "m": m.tolist(), "x": x.tolist(), "v": v.tolist(), "a": a.tolist(),
                    "features": feats.tolist(), "tau": tau, "g": float(_mlp(rule)(feats)), "h": h})
    return out


def export(path: str, softening: float | None = None) -> dict:
    """The JSON document of the rule in the checkpoint at ``path`` (for systems with ``softening``)."""
    try:
        ckpt = load_checkpoint(path)
        rule = load_rule(ckpt, softening)
    except (CheckpointError, ConfigError, ValueError) as exc:
        raise InputError(" ".join(str(exc).split())) from None
    if rule.mode == "seed":
        raise InputError(f"checkpoint {path}: a seed-mode model (model.output dt, {rule.cfg.features.feature_type} "
                         f"features) has no portable rule; only factor models with scale_free features export")
    rule.source = str(Path(path).resolve())
    cfg = rule.cfg
    blend = cfg.features.timescale in BLENDS
    features = FEATURES + [BLEND_FEATURE] if blend else FEATURES
    if cfg.features.radial_feature == "energy":
        features = [features[0], RADIAL_ENERGY, *features[2:]]
    timescale = {"name": "tau", "formula": "tau = min_i sqrt(r_i_nn / max(|a_i|, 1e-300))",
                 "min_acceleration": 1e-300}
    if blend:
        timescale = {**timescale, "name": "tau_blend",
                     "formula": "tau_blend = sqrt(tau * tau_prs), tau = min_i sqrt(r_i_nn / max(|a_i|, 1e-300))",
                     "prs_a_floor": PRS_A_FLOOR}
    if cfg.features.timescale in SOFT_BLENDS:
        w = soft_blend_exponent(cfg.features.timescale, "f6")
        timescale = {**timescale, "name": f"tau_{cfg.features.timescale}",
                     "formula": f"tau_{cfg.features.timescale} = tau * (tau_prs / tau)^({w}), f6 = eps / (r + eps) the "
                                "softening feature; tau = min_i sqrt(r_i_nn / max(|a_i|, 1e-300))"}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "units": "G = 1; any consistent length, mass and time units (the rule is scale-free)",
        "softening": rule.eps,
        "accelerations": {"formula": DEFINITIONS["a_i"].split(": ", 1)[1], "G": 1.0,
                          "note": "the rule's input a: your integrator's accelerations at x, with this softening"},
        "timescale": timescale,
        "features": {"kind": "scale_free", "timescale": cfg.features.timescale,
                     "radial_feature": cfg.features.radial_feature, "count": len(features),
                     "list": [{"index": i, "name": n, "formula": f} for i, (n, f) in enumerate(features)],
                     "definitions": {**DEFINITIONS, **BLEND_DEFINITIONS} if blend else DEFINITIONS,
                     "constants": {"tau_ratio_cap": TAU_RATIO_CAP, "cos2_guard": 1e-300}},
        "network": network_spec(rule),
        "output": output_spec(rule),
        "mode": mode_spec(rule),
        "integrator": {"scheme": "kick-drift-kick leapfrog (trained with)", "substeps": rule.substeps,
                       "formula": "v += dt/2 * a; x += dt * v; a = a(x); v += dt/2 * a (substeps times per dt)"},
        "provenance": {"checkpoint": rule.source, "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                       "epoch": ckpt.get("epoch"), "config_summary": cfg.summary(),
                       "config": cfg.to_dict(),
                       "description": rule.describe()},
        "test_vectors": test_vectors(rule),
    }


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        out = Path(args.out)
        if out.is_dir():
            raise InputError(f"--out {out}: is a folder; give the JSON file's path")
        doc = export(args.checkpoint, args.softening)
        data = (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode()
    except (InputError, ValueError) as exc:  # ValueError: a non-finite weight (allow_nan=False)
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)
    umask = os.umask(0)
    os.umask(umask)
    out.chmod(0o666 & ~umask)  # a file for others to read: the umask's mode, not mkstemp's private 0600
    print(f"export: {doc['mode']['kind']} rule of {doc['provenance']['checkpoint']} "
          f"(epoch {doc['provenance']['epoch']}) -> {out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
