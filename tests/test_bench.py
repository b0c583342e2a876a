"""driver/bench.py --quick runs the library's own functions and reports every figure."""
from __future__ import annotations

import json

import torch

from driver import bench


def test_quick_bench_reports_micro_and_collector_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    for part in ("micro", "collectors"):
        assert bench.main(["--quick", "--only", part, "--out", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["quick"] is True
        if part == "micro":
            keys = ("generalize_speedup_vs_loop", "learner_vs_mlp_floor", "collector_vs_mlp_floor",
                    "model_float32_speedup")
        else:
            keys = ("collector_samples_per_s_per_core", "vectorised_speedup_vs_per_system",
                    "collector_vs_batched_floor", "learner_keeps_pace")
            assert set(res["spread"]) >= set(keys)
        for k in keys:
            assert res[k] > 0, k
    assert "vectorised_speedup_vs_per_system" in capsys.readouterr().out


def test_quick_bench_reports_the_step_cost_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--only", "steps", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for k in ("learned_step_vs_adaptive_step", "learned_symmetric_step_vs_symmetric_adaptive_step",
              "seed_mode_step_vs_adaptive_step", "step_profile_force_eval_us", "step_profile_timescale_us",
              "step_profile_features_us", "step_profile_mlp_us", "generalist_step_vs_recursive_step",
              "recursive_prs_step_vs_recursive_step", "blend_step_vs_recursive_step",
              "recursive_blend_step_vs_recursive_step", "generalist_step_vs_recursive_step_N16",
              "generalist_step_vs_recursive_step_N64", "step_profile_N16_features_us", "step_profile_N64_mlp_us",
              "soft_step_vs_recursive_step_N16", "soft_step_vs_recursive_step_N64",
              "recursive_soft_blend_step_vs_recursive_step_N16", "recursive_soft_blend_step_vs_recursive_step_N64",
              "radial_step_vs_recursive_step", "recursive_soft_blend_step_vs_recursive_step_N2",
              "point_lean_step_vs_recursive_step"):
        assert res[k] > 0, k
    # at N = 64 the force evaluation's pairs spare tau its own pass over them (about 7x on the idle machine)
    assert res["step_profile_N64_timescale_given_pairs_us"] < 0.5 * res["step_profile_N64_timescale_us"]
    # the Plummer spheres' profiles: the force sums N^2 pairs, the MLP sees 8 numbers whatever N
    assert res["step_profile_N64_force_eval_us"] > 3 * res["step_profile_N16_force_eval_us"]
    assert res["step_profile_N64_mlp_us"] < res["step_profile_N64_force_eval_us"] / 3
    # the seed's mode rebuilds torch features of K + 1 = 4 states per step: dearer than the numpy factor rule
    assert res["seed_mode_step_vs_adaptive_step"] > res["learned_step_vs_adaptive_step"]
    assert "learned_step_vs_adaptive_step" in capsys.readouterr().out


def test_gpu_check_compares_devices_and_refuses_a_missing_one(capsys):
    from driver import gpu_check

    assert gpu_check.main(["--device", "cpu", "--steps", "20"]) == 0  # CPU against CPU: identical
    assert "CHECK ok" in capsys.readouterr().out
    if not torch.cuda.is_available():  # CI: no GPU, one clear line and exit 2
        assert gpu_check.main([]) == 2
        assert capsys.readouterr().out.startswith("gpu_check: error: no CUDA device here")


def test_quick_bench_reports_the_compiled_passage_figures(tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--only", "passage", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    for k in ("compiled_passage_speedup", "eager_passage_gradient_s", "compiled_passage_gradient_s",
              "compile_first_call_s"):
        assert res[k] > 0, k
    assert res["compiled_passage_gradient_max_rel_diff"] < 1e-5  # the same gradient, to rounding
    assert res["spread"]["compiled_passage_speedup"]["n"] == 3
