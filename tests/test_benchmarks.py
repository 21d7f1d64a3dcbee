"""The GPU benchmark suite: its smoke run on a CPU writes every key, failing parts are recorded, bad OUT_DIRs are refused."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"
TRAIN_KEYS = {"images_per_s", "seconds_per_step", "model_gflop_per_image", "achieved_gflop_per_s",
              "peak_matmul_gflop_per_s", "peak_matmul_dtype", "mfu", "precision", "channels_last", "compile"}
PART_KEYS = {
    "environment": {"gpu_name", "torch_version", "cuda_version", "bf16_dense_peak_tflop_per_s", "fp32_peak_tflop_per_s"},
    "train_canine": TRAIN_KEYS,
    "train_sdm_128": TRAIN_KEYS,
    "train_ldm": TRAIN_KEYS,
    "sample_transitions": {"sampler", "steps", "cfg_scale", "sequences_per_s",
                           "images_per_s"},
    "wsi_patches": {"results"},
    "loss_bf16_vs_fp32": {"steps", "final_loss_fp32", "final_loss_bf16", "relative_difference"},
}


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_suite():
    return load_benchmark("gpu_suite")


def test_smoke_run_writes_every_part_and_key(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(BENCHMARKS / "gpu_suite.sh"), str(out), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["smoke"] is True and report["failed_parts"] == []
    assert set(report["parts"]) == set(PART_KEYS)
    for name, keys in PART_KEYS.items():
        part = report["parts"][name]
        assert part["status"] == "ok", (name, part.get("error"))
        assert keys <= set(part["result"]), (name, keys - set(part["result"]))
    canine = report["parts"]["train_canine"]["result"]
    assert canine["precision"] == "bf16" and canine["channels_last"] is True
    assert report["parts"]["train_ldm"]["result"]["benchmark"] == "train_ldm"
    assert canine["model_gflop_per_image"] > 0 and 0 < canine["mfu"] < 1
    sampling = report["parts"]["sample_transitions"]["result"]
    assert sampling["sampler"] == "dpmpp_2m" and sampling["steps"] == 15 and sampling["cfg_scale"] == 2.0
    assert report["goals"]["canine_mfu"] == canine["mfu"] and isinstance(report["goals"]["canine_mfu_met"], bool)
    assert report["goals"]["wsi_patches_per_training_image"] > 0


def ok(result: dict) -> dict:
    return {"status": "ok", "result": result}


@pytest.mark.parametrize("mfu, cmu_rates, met, not_bottleneck", [
    (0.45, [900.0, 1200.0], True, True),
    (0.30, [400.0, 1200.0], False, False),
])
def test_goals_judge_mfu_and_the_slowest_real_slide_reading(mfu, cmu_rates, met, not_bottleneck):
    wsi = [{"slides": "synthetic", "workers": 16, "patches_per_s": 1.0}]
    wsi += [{"slides": "real_slide", "workers": 16, "patches_per_s": rate} for rate in cmu_rates]
    report = {"parts": {"train_canine": ok({"mfu": mfu, "images_per_s": 500.0}), "wsi_patches": ok({"results": wsi})}}
    goals = load_suite().goals(report)
    assert goals["canine_mfu_met"] is met and goals["wsi_not_the_bottleneck"] is not_bottleneck
    assert goals["wsi_patches_per_training_image"] == round(min(cmu_rates) / 500.0, 2)


def test_goals_are_open_when_their_parts_failed():
    report = {"parts": {"train_canine": {"status": "timeout"}, "wsi_patches": ok({"results": []})}}
    goals = load_suite().goals(report)
    assert goals["canine_mfu_met"] is None and goals["wsi_not_the_bottleneck"] is None


def test_failing_and_slow_parts_are_recorded_and_the_suite_goes_on(tmp_path, monkeypatch):
    suite = load_suite()
    python = [sys.executable, "-c"]
    monkeypatch.setattr(suite, "PARTS", (
        suite.Part("broken", 10, lambda smoke: python + ["import sys; print('bad size', file=sys.stderr); sys.exit(3)"]),
        suite.Part("slow", 1, lambda smoke: python + ["import time; time.sleep(30)"]),
        suite.Part("fine", 10, lambda smoke: python + ["print('{\"value\": 1}')"]),
    ))
    report = suite.run_suite(tmp_path, suite.Settings())
    parts = report["parts"]
    assert parts["broken"]["status"] == "error" and "exit code 3" in parts["broken"]["error"]
    assert "bad size" in parts["broken"]["error"]
    assert parts["slow"]["status"] == "timeout" and "within 1 s" in parts["slow"]["error"]
    assert parts["fine"] == {**parts["fine"], "status": "ok", "result": {"value": 1}}
    assert report["failed_parts"] == ["broken", "slow"]
    assert json.loads((tmp_path / "gpu_suite.json").read_text())["failed_parts"] == ["broken", "slow"]


def bad_out_dir(tmp_path: Path, kind: str) -> Path:
    if kind == "file":
        (tmp_path / "taken").write_text("x")
        return tmp_path / "taken"
    if kind == "dangling":
        (tmp_path / "link").symlink_to(tmp_path / "gone")
        return tmp_path / "link"
    return tmp_path / "unused"


@pytest.mark.parametrize("kind, extra, words", [
    ("file", [], ["OUT_DIR", "is a file", "expected a folder"]),
    ("dangling", [], ["OUT_DIR", "dangling symbolic link"]),
    ("none", ["--part", "nonsense"], ["--part", "invalid choice"]),
])
def test_bad_out_dir_is_refused_before_any_work(tmp_path, capsys, kind, extra, words):
    suite = load_suite()
    out = bad_out_dir(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert suite.run_main(suite.run, [str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and all(w in err for w in words), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_slide_is_refused_before_any_work(tmp_path, capsys):
    suite = load_suite()
    assert suite.run_main(suite.run, [str(tmp_path / "out"), "--slide", str(tmp_path / "gone.svs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--slide" in err and "gone.svs" in err, err
    assert not (tmp_path / "out").exists()


def test_the_wsi_part_reads_the_slide_given(tmp_path):
    suite = load_suite()
    argv = suite.wsi_argv(suite.Settings(smoke=False, slide=tmp_path / "a.svs"))
    assert argv[argv.index("--slide") + 1] == str(tmp_path / "a.svs") and "16" in argv
    assert "--slide" not in suite.wsi_argv(suite.Settings(smoke=True))


def test_bench_wsi_reads_a_real_slide_given_by_path(synthetic_root, tmp_path):
    from data.synthetic import slide_name, synthetic_paths

    slide = synthetic_paths(synthetic_root)["slides_dir"] / slide_name(0)
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_wsi.py"), "--patches", "16", "--batch_size", "8",
                           "--workers", "0", "--threads", "none", "--slide", str(slide),
                           "--synthetic_root", str(tmp_path / "synthetic")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["real_slide"] == str(slide)
    rows = {row["slides"]: row["patches_per_s"] for row in result["results"]}
    assert set(rows) == {"synthetic", "real_slide"} and all(rate > 0 for rate in rows.values())


def test_bench_wsi_refuses_a_file_that_is_no_slide(tmp_path, capsys):
    bad = tmp_path / "notes.svs"
    bad.write_text("not a slide")
    with pytest.raises(SystemExit) as exit_info:
        load_benchmark("bench_wsi").main(["--slide", str(bad), "--synthetic_root", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --slide") and "notes.svs" in err and "OpenSlide" in err, err
    assert not (tmp_path / "s").exists()


def test_missing_out_dir_is_refused(capsys):
    suite = load_suite()
    assert suite.run_main(suite.run, []) == 2
    assert "OUT_DIR" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--peak_size", "0"], ["--peak_size", "expected"]),
    (["--peak_size", "nan"], ["--peak_size", "expected"]),
    (["--precision", "fp8"], ["--precision", "invalid choice"]),
])
def test_bench_train_refuses_bad_flags(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_info:
        load_benchmark("bench_train").main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error:") and all(w in err for w in words), err
