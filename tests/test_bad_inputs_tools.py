"""Bad input to the tools: each case exits with code 2, a message naming the flag or file, and writes nothing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from common.files import MARKER
from data import synthetic
from tools import ablate, cluster, cluster_validation, compare_segmentation, evaluate, region_tiles, segmentation

ROOT = Path(__file__).resolve().parents[1]
DIFFUSION_CKPT = ROOT / "tests" / "fixtures" / "legacy_diffusion_v1.pt"
BINARY = bytes(range(256)) * 4


def exit_code(main: Callable, argv: list[str]) -> int:
    """The exit code of main(argv), whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def snapshot(root: Path) -> dict[str, float]:
    """Every path below root with its modification time (symlinks not followed)."""
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in root.rglob("*")}


def save_png(path: Path, value: int = 0, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def image_folder(folder: Path, count: int = 3) -> Path:
    for i in range(count):
        save_png(folder / f"tile_{i}.png", 40 * i)
    return folder


def tiled_folder(folder: Path, count: int = 3) -> Path:
    """A tiled folder of identical tiles (images/ and bin_masks/)."""
    for i in range(count):
        save_png(folder / "images" / f"tile_{i}.png", 120, 32)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:16] = 255
        (folder / "bin_masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(folder / "bin_masks" / f"tile_{i}.png")
    return folder


# ------------------------------------------------------------------------------------------------ evaluate


def targets_case(content: str | bytes) -> Callable[[Path], list[str]]:
    """evaluate --metrics controllability with a --targets CSV in gen/ (an image outside it, one inside)."""

    def build(tmp: Path) -> list[str]:
        save_png(tmp / "outside.png")
        save_png(tmp / "gen" / "a.png")
        save_png(tmp / "gen" / "b.png", 200)
        csv = tmp / "gen" / "targets.csv"
        text = content.replace("ABS", str(tmp / "outside.png")) if isinstance(content, str) else None
        csv.write_bytes(content if isinstance(content, bytes) else text.encode())
        return ["--metrics", "controllability", "--targets", str(csv), "--classifier_ckpts", str(tmp / "none.pt"),
                "--out", str(tmp / "out" / "eval.json"), "--device", "cpu"]

    return build


def targets_ckpts(ckpt: str) -> Callable[[Path], list[str]]:
    """A good --targets CSV and --classifier_ckpts `ckpt` (a state dict file when it is a bare name)."""

    def build(tmp: Path) -> list[str]:
        argv = targets_case("file,condition\na.png,0.1\nb.png,0.9\n")(tmp)
        path = ckpt if os.path.isabs(ckpt) else str(tmp / ckpt)
        if not os.path.isabs(ckpt):
            torch.save({"fc.weight": torch.zeros(2, 2)}, path)
        argv[argv.index("--classifier_ckpts") + 1] = path
        return argv

    return build


def evaluate_flags(*flags: str, metrics: str = "ssim") -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return ["--real", str(image_folder(tmp / "real")), "--fake", str(image_folder(tmp / "fake")),
                "--metrics", metrics, "--out", str(tmp / "out" / "eval.json"), "--device", "cpu", *flags]

    return build


def weights_file(name: str, payload) -> Callable[[Path], str]:
    def build(tmp: Path) -> str:
        path = tmp / name
        torch.save(payload, path)
        return str(path)

    return build


def evaluate_with_file(flag: str, metrics: str, make: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        return evaluate_flags(flag, make(tmp), metrics=metrics)(tmp)

    return build


def evaluate_out(kind: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        argv = evaluate_flags()(tmp)
        out = tmp / "out" / "eval.json"
        out.parent.mkdir()
        if kind == "dangling":
            out.symlink_to(tmp / "nowhere.json")
        else:
            (tmp / "blocker").write_text("a file\n")
            argv[argv.index(str(out))] = str(tmp / "blocker" / "eval.json")
        return argv

    return build


def style_duplicate(tmp: Path) -> list[str]:
    """evaluate --metrics style_distance on a STEDM folder whose samples.csv lists one tile twice."""
    fake = tmp / "stedm"
    save_png(fake / "img.png")
    save_png(fake / "s.png", 90)
    row = "img.png,u1,u2,s.png,\n"
    (fake / "samples.csv").write_text("file,layout_unit,style_units,style_files,layout_file\n" + row + row)
    return ["--fake", str(fake), "--metrics", "style_distance", "--out", str(tmp / "out" / "style.json")]


# ------------------------------------------------------------------------------------------------ ablate


def grid_case(content: str | bytes, out_file: bool = False) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        grid = tmp / "grid.yaml"
        grid.write_bytes(content if isinstance(content, bytes) else content.encode())
        out = tmp / "abl"
        if out_file:
            out.write_text("a file\n")
        return ["--grid", str(grid), "--out", str(out)]

    return build


def ablate_results(tmp: Path) -> list[str]:
    argv = grid_case("axes:\n  schedule: [linear]\n")(tmp)
    (tmp / "abl").mkdir()
    (tmp / "abl" / "results.csv").write_bytes(BINARY)
    return argv


# ------------------------------------------------------------------------------------------------ cluster_validation


def features_case(content: str | bytes, *flags: str) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        features = tmp / "features.csv"
        features.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["--features", str(features), "--out", str(tmp / "cv"), *flags]

    return build


def features_dangling_out(tmp: Path) -> list[str]:
    argv = features_case("tile,f\n1,0.5\n2,0.7\n3,0.1\n4,0.3\n", "--k", "2")(tmp)
    (tmp / "cv").symlink_to(tmp / "nowhere")
    return argv


FEATURES = "tile,f,g\n1,0.5,1\n2,0.7,2\n3,0.1,3\n4,0.3,4\n5,0.9,5\n"

# ------------------------------------------------------------------------------------------------ cluster


def cluster_case(*flags: str, tiles: int = 3, out: str = "clusters.csv") -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        if out.startswith("blocker/"):
            (tmp / "blocker").write_text("a file\n")
        return ["--tiles", str(tiled_folder(tmp / "tiles", tiles)), "--out", str(tmp / out), *flags]

    return build


# ------------------------------------------------------------------------------------------------ segmentation


def segmentation_case(*flags: str, runs: str | None = None) -> Callable[[Path], list[str]]:
    """tools.segmentation with --out tmp/res.csv; `runs`: 'foreign' (a runs folder without the marker, holding a
    file), 'link' (a symlink to such a folder)."""

    def build(tmp: Path) -> list[str]:
        (tmp / "real").mkdir()
        if runs:
            foreign = tmp / ("res_runs" if runs == "foreign" else "elsewhere")
            foreign.mkdir()
            (foreign / "keep.txt").write_text("user data\n")
            if runs == "link":
                (tmp / "res_runs").symlink_to(foreign)
        return ["--real", str(tmp / "real"), "--ratios", "0", "--out", str(tmp / "res.csv"), *flags]

    return build


# ------------------------------------------------------------------------------------------------ compare / region tiles / generators


def compare_case(metrics: bytes, dangling: bool = False) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        (tmp / "run").mkdir()
        (tmp / "run" / "test_metrics.json").write_bytes(metrics)
        out = tmp / "table.csv"
        if dangling:
            out.symlink_to(tmp / "nowhere.csv")
        return ["--runs", f"a={tmp / 'run'}", "--out", str(out)]

    return build


GOOD_METRICS = (b'{"iou": 0.5, "dice": 0.6, "slide_iou_mean": 0.5, "slide_iou_var": 0.01, "tiles": 4, "slides": 2, '
                b'"test_dir": "t"}')


def region_case(*flags: str, foreign_out: bool = False) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        out = tmp / "tiles_out"
        if foreign_out:
            out.mkdir()
            (out / "keep.txt").write_text("user data\n")
        return ["--data_root", str(tmp / "regions"), "--out", str(out), *flags]

    return build


def generator_case(*flags: str, root_file: bool = False) -> Callable[[Path], list[str]]:
    def build(tmp: Path) -> list[str]:
        root = tmp / "synthetic"
        if root_file:
            root.write_text("a file\n")
        return ["--root", str(root), "--quiet", *flags]

    return build


CASES = [
    # 1. --targets paths stay inside the CSV's folder; every row has a condition
    ("targets_absolute", evaluate.main, targets_case("file,condition\nABS,0.5\n"),
     ["--targets", "targets.csv", "line 2", "absolute path", "outside.png"]),
    ("targets_parent", evaluate.main, targets_case("file,condition\na.png,0.1\n../outside.png,0.5\n"),
     ["--targets", "targets.csv", "line 3", "../outside.png", "leaves the CSV's folder"]),
    ("targets_nested_parent", evaluate.main, targets_case("file,condition\nsub/../../outside.png,0.5\n"),
     ["targets.csv", "line 2", "leaves the CSV's folder"]),
    ("targets_no_condition", evaluate.main, targets_case("file,condition\na.png,0.1\nb.png,\n"),
     ["--targets", "targets.csv", "line 3", "no condition"]),
    ("targets_short_row", evaluate.main, targets_case("file,condition\na.png\n"),
     ["targets.csv", "line 2", "no condition"]),
    ("targets_missing_file", evaluate.main, targets_case("file,condition\nc.png,0.5\n"),
     ["targets.csv", "line 2", "'c.png' does not exist"]),
    ("targets_nan_condition", evaluate.main, targets_case("file,condition\na.png,nan\n"),
     ["targets.csv", "line 2", "not a finite number"]),
    # 2. binary files
    ("targets_binary", evaluate.main, targets_case(BINARY), ["--targets", "targets.csv", "cannot be read"]),
    ("grid_binary", ablate.main, grid_case(BINARY), ["--grid", "grid.yaml", "not a text file"]),
    ("grid_bad_yaml", ablate.main, grid_case("axes: [unclosed\n"), ["--grid", "grid.yaml", "not valid YAML"]),
    ("grid_list", ablate.main, grid_case("- axes\n- budget\n"), ["--grid", "grid.yaml", "expected a mapping", "list"]),
    ("grid_scalar_axis", ablate.main, grid_case("axes:\n  schedule: linear\n"),
     ["grid.yaml", "axes schedule", "expected a non-empty list", "'linear'"]),
    ("grid_unknown_axis", ablate.main, grid_case("axes:\n  no_such_flag: [1, 2]\n"),
     ["grid.yaml", "'no_such_flag'", "under axes", "known options", "schedule"]),
    ("grid_unknown_variant_flag", ablate.main, grid_case("axes:\n  attention:\n    none: {bogus: 1}\n"),
     ["grid.yaml", "'bogus'", "axes attention.none", "known options"]),
    ("grid_unknown_budget_flag", ablate.main, grid_case("budget: {max_stepz: 3}\naxes:\n  schedule: [linear]\n"),
     ["grid.yaml", "'max_stepz'", "budget"]),
    ("grid_variant_not_mapping", ablate.main, grid_case("axes:\n  attention:\n    none: 3\n"),
     ["grid.yaml", "axes attention.none", "mapping"]),
    ("grid_twice", ablate.main, grid_case("axes:\n  schedule: [linear, linear]\n"),
     ["grid.yaml", "more than once", "linear"]),
    ("grid_evaluate", ablate.main, grid_case("evaluate: {samples: 0}\naxes:\n  schedule: [linear]\n"),
     ["grid.yaml", "evaluate samples", "expected an integer >= 1"]),
    ("grid_evaluate_key", ablate.main, grid_case("evaluate: {sample: 3}\naxes:\n  schedule: [linear]\n"),
     ["grid.yaml", "unknown evaluate setting 'sample'", "samples"]),
    ("grid_base_missing", ablate.main, grid_case("base: nowhere.yaml\naxes:\n  schedule: [linear]\n"),
     ["grid.yaml", "base 'nowhere.yaml'", "not a file"]),
    ("grid_variant_config", ablate.main, grid_case("axes:\n  schedule: [linear]\n"),
     ["grid.yaml", "variant schedule-linear", "--dataset is required"]),
    ("ablate_results_binary", ablate.main, ablate_results, ["results.csv", "cannot be read"]),
    ("ablate_out_file", ablate.main, grid_case("axes:\n  schedule: [linear]\n", out_file=True),
     ["--out", "abl", "is a file; expected a folder"]),
    ("features_binary", cluster_validation.main, features_case(BINARY, "--k", "2"),
     ["--features", "features.csv", "cannot be read"]),
    ("metrics_json_binary", compare_segmentation.main, compare_case(BINARY), ["test_metrics.json", "expected the"]),
    ("metrics_json_not_numbers", compare_segmentation.main, compare_case(GOOD_METRICS.replace(b"0.6", b'"x"')),
     ["test_metrics.json", "['dice'] must be numbers"]),
    # 3. degenerate features and duplicate ids
    ("features_identical", cluster_validation.main,
     features_case("tile,f\n1,0.5\n2,0.5\n3,0.5\n4,0.5\n", "--k", "2"), ["--features", "features.csv", "same features"]),
    ("features_few_distinct", cluster_validation.main,
     features_case("tile,f\n1,0.5\n2,0.5\n3,0.7\n4,0.7\n5,0.5\n", "--k", "2:3"),
     ["features.csv", "only 2 distinct", "k = 3"]),
    ("features_few_distinct_final", cluster_validation.main,
     features_case("tile,f\n1,0.5\n2,0.5\n3,0.7\n4,0.7\n5,0.5\n", "--k", "2", "--k_final", "3"),
     ["features.csv", "only 2 distinct", "k = 3"]),
    ("features_duplicate_id", cluster_validation.main, features_case(FEATURES.replace("\n2,", "\n1,"), "--k", "2"),
     ["--features", "features.csv", "line 3", "tile '1'", "also on line 2"]),
    ("classifier_ckpts_diffusion", evaluate.main, targets_ckpts(str(DIFFUSION_CKPT)),
     ["--classifier_ckpts", "legacy_diffusion_v1.pt", "not a classifier"]),
    ("classifier_ckpts_state_dict", evaluate.main, targets_ckpts("weights.pt"),
     ["--classifier_ckpts", "weights.pt", "expected classifier checkpoints"]),
    ("targets_duplicate", evaluate.main, targets_case("file,condition\na.png,0.1\n./a.png,0.5\n"),
     ["--targets", "targets.csv", "line 3", "'./a.png'", "also on line 2"]),
    ("samples_duplicate", evaluate.main, style_duplicate, ["samples.csv", "line 3", "'img.png'", "also listed at line 2"]),
    ("cluster_identical_tiles", cluster.main, cluster_case("--k", "2"), ["--tiles", "only 1 patch", "k = 2"]),
    # 4. numeric flags: range and NaN / inf
    ("evaluate_image_size", evaluate.main, evaluate_flags("--image_size", "0"), ["--image_size", "an integer >= 1", "'0'"]),
    ("evaluate_limit", evaluate.main, evaluate_flags("--limit", "-1"), ["--limit", "an integer >= 1"]),
    ("evaluate_pairs_nan", evaluate.main, evaluate_flags("--pairs", "nan"), ["--pairs", "an integer >= 1", "'nan'"]),
    ("evaluate_batch_inf", evaluate.main, evaluate_flags("--batch_size", "inf"), ["--batch_size", "an integer >= 1"]),
    ("evaluate_nll_images", evaluate.main, evaluate_flags("--nll_images", "0"), ["--nll_images", "an integer >= 1"]),
    ("evaluate_seed", evaluate.main, evaluate_flags("--seed", "-1"), ["--seed", "an integer >= 0"]),
    ("evaluate_ssim_window", evaluate.main, evaluate_flags("--ssim_window", "1"), ["--ssim_window", "an integer >= 3"]),
    ("cv_subsample", cluster_validation.main, features_case(FEATURES, "--k", "2", "--subsample", "nan"),
     ["--subsample", "an integer >= 2"]),
    ("cv_seed", cluster_validation.main, features_case(FEATURES, "--k", "2", "--seed", "-3"), ["--seed", "an integer >= 0"]),
    ("cv_k_final", cluster_validation.main, features_case(FEATURES, "--k", "2", "--k_final", "1"),
     ["--k_final", "an integer >= 2"]),
    ("cluster_k", cluster.main, cluster_case("--k", "0"), ["--k", "an integer >= 1"]),
    ("cluster_examples", cluster.main, cluster_case("--k", "1", "--examples", "0"), ["--examples", "an integer >= 1"]),
    ("cluster_seed", cluster.main, cluster_case("--k", "1", "--seed", "inf"), ["--seed", "an integer >= 0"]),
    ("seg_steps", segmentation.main, segmentation_case("--steps", "0"), ["--steps", "an integer >= 1"]),
    ("seg_batch", segmentation.main, segmentation_case("--batch_size", "-2"), ["--batch_size", "an integer >= 1"]),
    ("seg_lr_zero", segmentation.main, segmentation_case("--lr", "0"), ["--lr", "a finite number > 0"]),
    ("seg_lr_nan", segmentation.main, segmentation_case("--lr", "nan"), ["--lr", "a finite number > 0", "'nan'"]),
    ("seg_held_out", segmentation.main, segmentation_case("--held_out", "1"), ["--held_out", "> 0 and < 1"]),
    ("seg_workers", segmentation.main, segmentation_case("--num_workers", "-1"), ["--num_workers", "an integer >= 0"]),
    ("seg_seed", segmentation.main, segmentation_case("--seed", "-1"), ["--seed", "an integer >= 0"]),
    ("seg_seeds", segmentation.main, segmentation_case("--seeds", "0,-1"), ["--seeds", "integers >= 0", "0,-1"]),
    ("seg_ratios_nan", segmentation.main, segmentation_case("--ratios", "nan"), ["--ratios", "in [0, 1]", "nan"]),
    ("seg_counts", segmentation.main, segmentation_case("--real_counts", "8,0"), ["--real_counts", "counts >= 1"]),
    ("region_tile_size", region_tiles.main, region_case("--tile_size", "4"), ["--tile_size", "an integer >= 8"]),
    ("region_per_slide", region_tiles.main, region_case("--per_slide", "0"), ["--per_slide", "an integer >= 1"]),
    ("region_min_tissue", region_tiles.main, region_case("--min_tissue", "1.5"), ["--min_tissue", ">= 0 and <= 1"]),
    ("region_mpp", region_tiles.main, region_case("--mpp", "nan"), ["--mpp", "a finite number > 0"]),
    ("region_level", region_tiles.main, region_case("--level", "-1"), ["--level", "an integer >= 0"]),
    ("region_seed", region_tiles.main, region_case("--seed", "1.5"), ["--seed", "an integer >= 0"]),
    ("generator_nan", synthetic.main, generator_case("--num_slides", "nan"), ["--num_slides", "an integer", "'nan'"]),
    ("generator_float_inf", synthetic.main, generator_case("--mpp", "inf"), ["--mpp", "a finite number", "'inf'"]),
    ("generator_range", synthetic.main, generator_case("--num_slides", "0"), ["--num_slides", "expected at least 1"]),
    # 5. checkpoints and weight files of the wrong kind
    ("features_diffusion_ckpt", evaluate.main,
     evaluate_with_file("--features", "fid", lambda tmp: str(DIFFUSION_CKPT)),
     ["--features", "legacy_diffusion_v1.pt", "holds a diffusion model", "expected a classifier checkpoint"]),
    ("features_state_dict", evaluate.main,
     evaluate_with_file("--features", "fid", weights_file("weights.pt", {"fc.weight": torch.zeros(2, 2)})),
     ["--features", "weights.pt", "expected a classifier checkpoint"]),
    ("inception_list", evaluate.main,
     evaluate_with_file("--inception_weights", "fid", weights_file("inception.pt", [torch.zeros(2)])),
     ["--inception_weights", "inception.pt", "expected a torchvision inception_v3 state dict"]),
    ("inception_checkpoint_dict", evaluate.main,
     evaluate_with_file("--inception_weights", "fid", weights_file("inception.pt", {"model": {}, "step": 3})),
     ["--inception_weights", "inception.pt", "expected a torchvision inception_v3 state dict"]),
    ("lpips_tensor", evaluate.main,
     evaluate_with_file("--lpips_weights", "lpips", weights_file("vgg.pt", torch.zeros(3))),
     ["--lpips_weights", "vgg.pt", "state dict"]),
    ("nll_ckpt_not_checkpoint", evaluate.main,
     evaluate_with_file("--nll_ckpt", "nll", weights_file("nll.pt", {"fc.weight": torch.zeros(2)})),
     ["--nll_ckpt", "nll.pt", "expected an unconditional or class-conditional pixel diffusion checkpoint"]),
    # 6. output paths: checked first, --overwrite deletes only the tool's own folders
    ("evaluate_out_dangling", evaluate.main, evaluate_out("dangling"), ["--out", "eval.json", "dangling symbolic link"]),
    ("evaluate_out_under_file", evaluate.main, evaluate_out("under_file"), ["--out", "blocker", "is a file"]),
    ("cv_out_dangling", cluster_validation.main, features_dangling_out, ["--out", "cv", "dangling symbolic link"]),
    ("cluster_out_under_file", cluster.main, cluster_case("--k", "1", out="blocker/c.csv"), ["--out", "blocker", "is a file"]),
    ("compare_out_dangling", compare_segmentation.main, compare_case(GOOD_METRICS, dangling=True),
     ["--out", "table.csv", "dangling symbolic link"]),
    ("seg_overwrite_foreign", segmentation.main, segmentation_case("--overwrite", runs="foreign"),
     ["--overwrite", "res_runs", "not written by this toolkit", MARKER]),
    ("seg_overwrite_link", segmentation.main, segmentation_case("--overwrite", runs="link"),
     ["--overwrite", "res_runs", "symbolic link"]),
    ("seg_runs_exist", segmentation.main, segmentation_case(runs="foreign"), ["--out", "res_runs", "already exists"]),
    ("region_overwrite_foreign", region_tiles.main, region_case("--overwrite", foreign_out=True),
     ["--out", "tiles_out", "not written by this toolkit"]),
    ("generator_root_file", synthetic.main, generator_case(root_file=True), ["--root", "synthetic", "is a file"]),
]


@pytest.mark.parametrize("main, build, words", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(tmp_path, capsys, main, build, words):
    argv = build(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert exit_code(main, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert snapshot(tmp_path) == before


def test_segmentation_overwrite_replaces_only_its_own_runs_folder(tmp_path):
    out = tmp_path / "res.csv"
    runs = segmentation.prepare_outputs(out, overwrite=False, inputs=[tmp_path / "real"])
    assert (runs / MARKER).is_file()
    (runs / "old.txt").write_text("from an earlier run\n")
    again = segmentation.prepare_outputs(out, overwrite=True, inputs=[tmp_path / "real"])
    assert again == runs and (runs / MARKER).is_file() and not (runs / "old.txt").exists()
    with pytest.raises(ValueError, match="holds"):
        segmentation.prepare_outputs(out, overwrite=True, inputs=[runs / "tiles"])
    assert runs.is_dir()


def test_ablate_marks_the_output_folder_it_creates(tmp_path, monkeypatch):
    grid = tmp_path / "grid.yaml"
    grid.write_text("axes:\n  schedule: [linear]\n")
    monkeypatch.setattr(ablate, "check_variants", lambda *args: None)
    monkeypatch.setattr(ablate, "train_variant", lambda grid, flags, out: out)
    monkeypatch.setattr(ablate, "evaluate_variant",
                        lambda run_dir, settings, device: {"step": 1, "ssim": 0.5, "nll_bpd": 3.0, "samples": 1,
                                                           "nll_images": 1})
    ablate.run(["--grid", str(grid), "--out", str(tmp_path / "abl"), "--device", "cpu"])
    assert (tmp_path / "abl" / MARKER).is_file() and (tmp_path / "abl" / "results.csv").is_file()


def test_cluster_validation_marks_the_output_folder_it_creates(tmp_path):
    features = tmp_path / "features.csv"
    features.write_text(FEATURES)
    assert cluster_validation.main(["--features", str(features), "--k", "2", "--out", str(tmp_path / "cv")]) == 0
    assert (tmp_path / "cv" / MARKER).is_file()
    os.remove(tmp_path / "cv" / MARKER)
    assert cluster_validation.main(["--features", str(features), "--k", "2", "--out", str(tmp_path / "cv"),
                                    "--overwrite"]) == 0
    assert not (tmp_path / "cv" / MARKER).exists()


def test_nll_condition_csv_lists_each_image_once(tmp_path):
    from common.errors import DataError
    from tools.evaluation import true_conditions

    conditions = tmp_path / "conditions.csv"
    conditions.write_text("file,condition\ntile_0.png,0\ntile_1.png,1\ntile_0,1\n")
    with pytest.raises(DataError, match=r"conditions.csv, line 4: image 'tile_0' is also on line 2"):
        true_conditions(str(conditions), ["tile_0", "tile_1"], ["label"], 2, "model.pt")
