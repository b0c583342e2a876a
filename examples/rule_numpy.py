"""A learned step rule from its exported JSON alone: numpy, no aits (docs/RULE.md).

    aits-export --checkpoint runs/<name>/model/model_epoch_0100.pt --out rule.json
    python examples/rule_numpy.py rule.json        # checks the file's test vectors, then one Kepler orbit

In your code::

    from rule_numpy import JsonRule
    rule = JsonRule("rule.json")
    rule.start()
    dt = rule.next_dt(x, v, a, m)        # once per step; a = accelerations at x (rule.accel(x, m))

This file is meant to be read (and translated): every formula is the one the JSON states.
"""
from __future__ import annotations

import json
import math
import sys

import numpy as np

ACTIVATIONS = {"tanh": np.tanh, "relu": lambda y: np.maximum(y, 0.0), "silu": lambda y: y / (1.0 + np.exp(-y)),
               "sigmoid": lambda y: 1.0 / (1.0 + np.exp(-y))}


class JsonRule:
    """The rule of one exported JSON file (format ``aits-rule`` version 1).

    Parameters
    ----------
    path_or_doc : str or dict
        The JSON file or its parsed content.
    """

    def __init__(self, path_or_doc):
        if isinstance(path_or_doc, dict):
            doc = path_or_doc
        else:
            with open(path_or_doc) as fh:
                doc = json.load(fh)
        if doc.get("format") != "aits-rule" or doc.get("format_version") != 1:
            raise ValueError(f"not an aits-rule version 1 file: {doc.get('format')} {doc.get('format_version')}")
        self.eps = float(doc["softening"])
        self.cap = float(doc["features"]["constants"]["tau_ratio_cap"])
        self.timescale = doc["features"].get("timescale", "nn")
        self.radial = doc["features"].get("radial_feature", "fraction")  # feature 1: the cosine, or the radial energy
        if self.timescale not in ("nn", "blend", "soft_blend", "prs_lean", "prs_point_lean"):
            raise ValueError(f"features.timescale {self.timescale!r} is not implemented here")
        self.prs_a_floor = float(doc["timescale"].get("prs_a_floor", 0.0))
        net = doc["network"]
        self.act = ACTIVATIONS[net["activation"]]
        self.layers = [(np.array(lay["W"], dtype=np.float64), np.array(lay["b"], dtype=np.float64), lay["activation"])
                       for lay in net["layers"]]
        self.proj = None if net["fourier"] is None else np.array(net["fourier"]["P"], dtype=np.float64)
        self.output = doc["output"]
        if self.output["kind"] not in ("softplus_factor", "bounded_factor"):
            raise ValueError(f"output kind {self.output['kind']!r} is not implemented here")
        self.mode = doc["mode"]["kind"]
        self.k = int(doc["mode"].get("iterations", 0))
        self.clip = doc["mode"].get("clip")
        self.substeps = int(doc["integrator"]["substeps"])
        self.doc = doc
        self.start()

    # ------------------------------------------------------------ physics
    def accel(self, x, m):
        """a_i = sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + eps^2)^(3/2), G = 1; x (N,D), m (N,)."""
        d = x[None, :, :] - x[:, None, :]  # d[i, j] = x_j - x_i
        r2 = (d * d).sum(-1) + self.eps ** 2
        np.fill_diagonal(r2, 1.0)
        w = m[None, :] / (r2 * np.sqrt(r2))
        np.fill_diagonal(w, 0.0)
        return (w[:, :, None] * d).sum(1)

    def tau_prs(self, x, v, a, m, i):
        """IAS15's 2024 timescale of body i (definitions.tau_prs of the JSON); inf where it has none."""
        d = x[None, :, :] - x[:, None, :]
        u = v[None, :, :] - v[:, None, :]
        big_a = a[None, :, :] - a[:, None, :]
        r2 = (d * d).sum(-1) + self.eps ** 2
        np.fill_diagonal(r2, 1.0)
        w = m[None, :] / (r2 * np.sqrt(r2))
        np.fill_diagonal(w, 0.0)
        alpha = (d * u).sum(-1) / r2
        beta = ((u * u).sum(-1) + (d * big_a).sum(-1)) / r2 + alpha ** 2
        a_ij = w[..., None] * d
        j_ij = w[..., None] * u - 3.0 * alpha[..., None] * a_ij
        s_ij = w[..., None] * big_a - 6.0 * alpha[..., None] * j_ij - 3.0 * beta[..., None] * a_ij
        j, s = j_ij.sum(1), s_ij.sum(1)
        a2 = (a * a).sum(-1)
        den = (j * j).sum(-1) + np.sqrt(a2 * (s * s).sum(-1))
        ok = a2[i] > self.prs_a_floor ** 2 * a2.max() and den[i] > 0
        return float(np.sqrt(2.0 * a2[i] / den[i])) if ok else math.inf

    def features(self, x, v, a, m):
        """(the scale-free features, the timescale) of one state; features.list of the JSON, in order."""
        n = len(m)
        d = x[None, :, :] - x[:, None, :]
        r2 = (d * d).sum(-1)
        np.fill_diagonal(r2, np.inf)
        jnn = r2.argmin(1)  # first index on ties
        r_nn = np.sqrt(r2[np.arange(n), jnn])
        tau_i = np.sqrt(r_nn / np.maximum(np.sqrt((a * a).sum(-1)), 1e-300))
        i = int(tau_i.argmin())
        j = int(jnn[i])
        tau = float(tau_i[i])
        rvec, uvec = x[j] - x[i], v[j] - v[i]
        r = math.sqrt(float(rvec @ rvec))
        u2 = float(uvec @ uvec)
        mu = float(m[i] + m[j])
        if n > 2:
            others = [k for k in range(n) if k not in (i, j)]
            f3 = min(max(math.log(float(tau_i[others].min()) / tau), 0.0), self.cap)
            np.fill_diagonal(r2, 0.0)
            mean_pair = float(np.sqrt(r2).sum()) / (n * (n - 1))
            f7 = math.log(r / mean_pair)
        else:
            f3, f7 = self.cap, 0.0
        ru2 = float(rvec @ uvec) ** 2
        f = np.array([u2 * r / mu, ru2 / (r * mu) if self.radial == "energy" else ru2 / (r * r * u2 + 1e-300),
                      math.sqrt(float(a[i] @ a[i])) * r * r / float(m[j]), f3, mu / float(m.sum()),
                      float(min(m[i], m[j]) / max(m[i], m[j])), self.eps / (r + self.eps), f7])
        if self.timescale != "nn":  # the blends: a 9th feature, and h scales with a blend of tau and tau_prs
            t_prs = self.tau_prs(x, v, a, m, i)
            t_prs = t_prs if math.isfinite(t_prs) else tau
            f = np.append(f, min(max(math.log(t_prs / tau), -self.cap), self.cap))
            if self.timescale == "blend":
                tau = math.sqrt(tau * t_prs)
            else:  # tau * (tau_prs / tau)^p, f6 = f[6] the softening feature (the JSON's tau_<timescale>)
                f6 = f[6]
                if self.timescale == "soft_blend":  # p = (1 - f6) / 2
                    p = 0.5 * (1.0 - f6)
                elif self.timescale == "prs_lean":  # p = 3 (1 - f6) / 4
                    p = 0.75 * (1.0 - f6)
                else:  # prs_point_lean: p = (1 - f6) (1/2 + 1/4 exp(-f6 / 0.01))
                    p = (1.0 - f6) * (0.5 + 0.25 * math.exp(-f6 / 0.01))
                tau = tau * (t_prs / tau) ** p
        return f, tau

    def g(self, f):
        """The network's factor g(f) > 0 (network and output of the JSON)."""
        y = f
        if self.proj is not None:
            q = 2.0 * np.pi * (y @ self.proj)
            y = np.concatenate([np.sin(q), np.cos(q)])
        for w, b, act in self.layers:
            y = w @ y + b
            if act:
                y = self.act(y)
        z = float(y[0])
        if self.output["kind"] == "bounded_factor":
            s = math.tanh(z)
            box = self.output.get("range_check")
            if box:  # outside the training box the modulation fades to the classical rule
                lo, hi, delta = (np.asarray(box[k]) for k in ("lo", "hi", "delta"))
                d = (np.maximum(lo - f, 0.0) + np.maximum(f - hi, 0.0)) / delta
                s *= math.exp(-float(d @ d))
            return self.output["eta0"] * self.output["max_modulation"] ** s
        soft = z if z > self.output["softplus_threshold"] else math.log1p(math.exp(z))
        return soft + self.output["offset"]

    def h(self, x, v, a, m):
        """The step function h = g(features) * tau."""
        f, tau = self.features(x, v, a, m)
        return self.g(f) * tau

    def dt(self, x, v, m):
        """The explicit form: dt = h(x, v, a(x), m)."""
        return self.h(x, v, self.accel(x, m), m)

    # ------------------------------------------------------------ stepper
    def start(self):
        """A fresh run: the next step is a first step."""
        self.dt_prev = 0.0

    def kdk(self, x, v, a, m, dt):
        """One kick-drift-kick step (the integrator the rule was trained with). Returns (x, v, a)."""
        v = v + 0.5 * dt * a
        x = x + dt * v
        a = self.accel(x, m)
        return x, v + 0.5 * dt * a, a

    def next_dt(self, x, v, a, m, trial=None):
        """The step from the current state, by the JSON's mode; ``trial(dt) -> (x1, v1, a1)`` is the
        symmetric form's trial step (default: kdk)."""
        h0 = self.h(x, v, a, m)
        if self.mode == "explicit":
            dt = h0
        elif self.mode == "recursive":
            dt = h0 * h0 / self.dt_prev if self.dt_prev > 0 else h0
            if self.clip is not None:
                dt = min(max(dt, h0 / self.clip), h0 * self.clip)
        elif self.mode == "symmetric":
            trial = trial or (lambda s: self.kdk(x, v, a, m, s))
            dt = h0
            for _ in range(self.k):
                x1, v1, a1 = trial(dt)
                dt = 0.5 * (h0 + self.h(x1, v1, a1, m))
        else:
            raise ValueError(f"mode {self.mode!r} is not implemented here")
        self.dt_prev = dt
        return dt


def check_test_vectors(rule: JsonRule) -> float:
    """The largest relative difference to the JSON's test vectors (features, tau, g, h)."""
    worst = 0.0
    for tv in rule.doc["test_vectors"]:
        m, x, v, a = (np.array(tv[k], dtype=np.float64) for k in ("m", "x", "v", "a"))
        f, tau = rule.features(x, v, a, m)
        got = np.concatenate([f, [tau, rule.g(f), rule.h(x, v, a, m)], rule.accel(x, m).ravel()])
        want = np.concatenate([tv["features"], [tv["tau"], tv["g"], tv["h"]], a.ravel()])
        worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300))))
    return worst


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python examples/rule_numpy.py rule.json", file=sys.stderr)
        return 2
    rule = JsonRule(argv[0])
    print(f"{rule.mode} rule; test vectors agree to {check_test_vectors(rule):.1e} (relative)")
    # One Kepler orbit at e = 0.9 (G = 1, masses 1 and 1, semi-major axis 1, from pericentre).
    e, m = 0.9, np.array([1.0, 1.0])
    x = np.array([[-(1 - e) / 2, 0.0], [(1 - e) / 2, 0.0]])
    vp = math.sqrt(2.0 * (1 + e) / (1 - e))
    v = np.array([[0.0, vp / 2], [0.0, -vp / 2]])
    period, t, steps = 2 * math.pi / math.sqrt(2.0), 0.0, 0
    a = rule.accel(x, m)

    def energy(x, v):
        r2 = float(np.sum((x[1] - x[0]) ** 2)) + rule.eps ** 2
        return 0.5 * float(m @ (v * v).sum(-1)) - m[0] * m[1] / math.sqrt(r2)

    e0 = energy(x, v)
    rule.start()
    while period - t > 1e-12 * period:
        dt = min(rule.next_dt(x, v, a, m), (period - t) / rule.substeps)
        for _ in range(rule.substeps):
            x, v, a = rule.kdk(x, v, a, m, dt)
        t, steps = t + dt * rule.substeps, steps + 1
    print(f"one Kepler orbit (e = {e}): {steps} steps, |dE/E| at the end {abs(energy(x, v) / e0 - 1):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
