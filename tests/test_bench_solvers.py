"""The sampler benchmarks run end to end on a tiny model and report every method against its references."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train
from conftest import ROOT, tiny_config
from test_evaluate import TINY_PCAM, argv
from test_train import TINY_UNET


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    diffusion = train.run(tiny_config(synthetic_root, out, **{**TINY_UNET, "max_steps": 2}))
    train.run(tiny_config(synthetic_root, out, model_type="resnet18", tile_size=16, max_steps=1, ensemble=0))
    plain = train.run(tiny_config(synthetic_root, tmp_path_factory.mktemp("plain"), **{**TINY_UNET, "max_steps": 2,
                                                                                       "conditions": "none"}))
    return {"diffusion": diffusion / "last.pt", "resnet": out / "resnet", "unconditional": plain / "last.pt"}


def run(script: str, *argv: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv], cwd=ROOT, capture_output=True,
                          text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("reference", ["ddpm", "ddim"])
def test_bench_transitions_compares_every_method_with_the_reference(trained, tmp_path, reference):
    result = run("bench_transitions.py", "--ckpt", str(trained["diffusion"]), "--classifier_ckpts", str(trained["resnet"]),
                 "--sequences", "2", "--original_sequences", "1", "--conditions", "0,1", "--methods", "dpmpp_2m:5,ddim:5",
                 "--reference", reference, "--out", str(tmp_path / "out"))
    methods = [row["method"] for row in result["results"]]
    assert methods[0].startswith(f"reference: {reference}-50") and methods[1].startswith("original procedure")
    assert methods[2:] == ["dpmpp_2m-5", "ddim-5"]
    assert all(0 <= row["max_score_difference"] <= 1 for row in result["results"])
    assert all(row["speedup_vs_original"] > 0 for row in result["results"])
    with open(tmp_path / "out" / "curves.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    assert (tmp_path / "out" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_solvers_measures_distances_to_both_references(trained, tmp_path):
    result = run("bench_solvers.py", "--ckpt", str(trained["unconditional"]), "--methods", "dpmpp_2m:4,dpmpp_2m_sde:4",
                 "--out", str(tmp_path / "out"), "--", "--num_per_cluster", "6")
    rows = {row["method"]: row for row in result["results"]}
    assert list(rows) == ["ddpm-50", "ddim-50", "dpmpp_2m-4", "dpmpp_2m_sde-4"]  # T = 50 in the tiny model
    assert rows["ddim-50"]["ode_rmse"] == 0 and rows["dpmpp_2m-4"]["ode_rmse"] > 0
    assert rows["dpmpp_2m_sde-4"]["ode_rmse"] == "" and rows["ddpm-50"]["ode_rmse"] == ""
    assert all(0 <= row["colour_difference"] < 1 for row in rows.values())
    assert (tmp_path / "out" / "methods.png").is_file() and (tmp_path / "out" / "results.csv").is_file()
    assert not (tmp_path / "out" / "results_per_cluster.csv").exists()  # one folder of tiles: no clusters


def test_bench_solvers_measures_every_class_of_a_label_model_on_its_own(tmp_path):
    run_dir = train.run(argv({**TINY_PCAM, "data_root": tmp_path / "data", "out_dir": tmp_path / "runs",
                              "conditions": "label", "timesteps": 30}))
    out = tmp_path / "out"
    result = run("bench_solvers.py", "--ckpt", str(run_dir / "last.pt"), "--methods", "dpmpp_2m:3", "--out", str(out),
                 "--", "--num_per_class", "4", "--cfg_scale", "2")
    with open(out / "results_per_cluster.csv") as fh:
        clusters = list(csv.DictReader(fh))
    assert [(r["method"], r["cluster"], r["tiles"]) for r in clusters] == [
        (m, c, "4") for m in ("ddpm-30", "ddim-30", "dpmpp_2m-3") for c in ("class_00", "class_01")]
    solver = result["results"][2]
    within = [float(r["ode_rmse"]) for r in clusters if r["method"] == "dpmpp_2m-3"]
    # Equal clusters: the squared RMSE over all tiles is the mean of the clusters' squared RMSEs.
    assert solver["ode_rmse"] == pytest.approx(float(np.sqrt(np.mean(np.square(within)))), abs=2e-4)
    assert solver["worst_cluster_ode_rmse"] == max(within) > 0
    colours = [float(r["colour_difference"]) for r in clusters if r["method"] == "dpmpp_2m-3"]
    assert solver["worst_cluster_colour_difference"] == max(colours)


def test_bench_sample_times_every_listed_sampler_for_sdm_tiles():
    result = run("bench_sample.py", "--model", "sdm", "--image_size", "16", "--dim", "16", "--dim_mults", "1,2",
                 "--num_res_blocks", "1", "--sequences", "1", "--samplers", "ddim:3,dpmpp_2m:2", "--cfg_scale", "2")
    assert result["cfg_scale"] == 2.0
    timed = sorted(key for key in result if key.endswith("_s_per_tile"))
    assert timed == ["ddim_3_s_per_tile", "dpmpp_2m_2_s_per_tile"] and all(result[key] > 0 for key in timed)


@pytest.mark.parametrize("script, argv", [
    ("bench_sample.py", ["--samplers"]),
    ("bench_solvers.py", ["--ckpt", "x.pt", "--out", "OUT", "--methods"]),
    ("bench_transitions.py", ["--ckpt", "x.pt", "--classifier_ckpts", "y", "--out", "OUT", "--methods"]),
])
def test_benchmarks_refuse_an_unknown_sampler_naming_the_flag(script, argv, tmp_path):
    argv = [str(tmp_path / "out") if arg == "OUT" else arg for arg in argv] + ["ddim:5,euler:10"]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert f"argument {argv[-2]}: expected sampler:steps" in done.stderr and "'euler:10'" in done.stderr
    assert not (tmp_path / "out").exists()
