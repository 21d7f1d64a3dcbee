"""What users see from evaluate.py and inference.py: progress bars over the long loops, their labels, the
Frechet distance on near-singular covariances, and the grid.png pictures of --paired LDM and SDM synthesis."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from diffusion.latent import LatentDiffusion
from diffusion.sampling import SamplingSpec
from metrics import distribution
from metrics.features import FeatureExtractor
from recipes import latents, synthesis
from tools import evaluation

CPU = torch.device("cpu")


class TinyFeatures(FeatureExtractor):
    """A parameter-free feature network: the first six pixel values."""

    name = "tiny"
    dim = 6

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, : self.dim]


def image_set(count: int, size: int, seed: int, source: str) -> evaluation.ImageSet:
    images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return evaluation.ImageSet(images, [f"tile{i}" for i in range(count)], source)


def bar_lines(text: str, label: str) -> list[str]:
    """The progress-bar updates labelled `label` (tqdm redraws with carriage returns)."""
    return [line for line in text.replace("\r", "\n").splitlines() if line.startswith(label)]


def assert_bar_with_time_left(text: str, label: str, total: int) -> None:
    lines = bar_lines(text, label)
    assert lines, f"no progress bar {label!r} in {text!r}"
    assert f"{total}/{total}" in lines[-1] and "<" in lines[-1], lines[-1]


# ---- 1. progress bars of evaluate.py ----

def test_feature_extraction_shows_a_bar_per_image_set(capsys):
    real, fake = image_set(10, 8, 0, "real"), image_set(7, 8, 1, "fake")
    out = evaluation.distribution_metrics(real, fake, ["kid"], TinyFeatures(), 4, CPU, 0)
    err = capsys.readouterr().err
    assert np.isfinite(out["kid"])
    assert_bar_with_time_left(err, "tiny features of --real", 10)
    assert_bar_with_time_left(err, "tiny features of --fake", 7)


@pytest.mark.parametrize("names, pairs, label, total", [
    (True, 50, "ssim, pairs by file name", 6),
    (False, 9, "ssim, random pairs", 9),
])
def test_paired_metrics_show_a_bar(capsys, names, pairs, label, total):
    real = image_set(6, 32, 0, "real")
    fake = image_set(6, 32, 1, "fake")
    if not names:
        fake.names = [f"other{i}" for i in range(6)]
    values, paired = evaluation.structural_metrics(real, fake, ["ssim"], "auto", pairs, 0, 4, CPU, None)
    assert paired is names and np.isfinite(values["ssim"])
    assert_bar_with_time_left(capsys.readouterr().err, label, total)


def test_controllability_scoring_shows_a_bar(tmp_path, capsys, monkeypatch):
    files = []
    for i in range(5):
        files.append(tmp_path / f"g{i}.png")
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(files[-1])
    targets = evaluation.Targets(files, np.linspace(0, 1, 5), [{"file": f.name} for f in files])
    monkeypatch.setattr(evaluation, "classifier_ensemble", lambda paths, device: lambda x: x.mean((1, 2, 3)))
    result = evaluation.controllability(targets, ["unused"], 2, CPU)
    assert result["controllability_images"] == 5
    assert_bar_with_time_left(capsys.readouterr().err, "controllability scoring", 5)


def test_nll_shows_a_bar_over_images(capsys, monkeypatch):
    steps = []
    diffusion = SimpleNamespace(num_timesteps=5, variational_bound=lambda fn, x0, progress: steps.append(progress)
                                or {"total_bpd": torch.ones(len(x0))})
    loaded = SimpleNamespace(model_config={"unet": {"image_size": 8, "conditions": []}}, model=None, diffusion=diffusion)
    monkeypatch.setattr(evaluation, "load_flag_checkpoint", lambda *args: loaded)
    result = evaluation.nll_bits_per_dim("ckpt.pt", image_set(6, 8, 0, "real"), 5, 2, CPU)
    assert result["nll_images"] == 5 and steps == [True, True, True]
    assert_bar_with_time_left(capsys.readouterr().err, "NLL images (5 steps each)", 5)


# ---- 2. the tile bar says what is rendered ----

def pixel_model() -> torch.nn.Module:
    return torch.nn.Identity()


def latent_model() -> torch.nn.Module:
    return LatentDiffusion.__new__(LatentDiffusion)


@pytest.mark.parametrize("make_model, ids, label_name, expected", [
    (latent_model, [0, 1], "cluster", "ldm tiles"),
    (pixel_model, [0, 1], "class", "class tiles"),
    (pixel_model, None, "class", "tiles"),
])
def test_tile_bar_names_what_is_rendered(tmp_path, capsys, monkeypatch, make_model, ids, label_name, expected):
    monkeypatch.setattr(latents, "sample_tiles", lambda model, diffusion, labels, count, *rest, **kw: torch.zeros(count, 3, 8, 8))
    written = latents.generate_per_cluster(make_model(), None, ids, 2, SamplingSpec(), 2, 0, CPU, tmp_path / "out",
                                           label_name=label_name)
    err = capsys.readouterr().err
    assert written == 2 * len(ids or [None])
    assert_bar_with_time_left(err, f"{expected}:", written)
    if make_model is pixel_model:
        assert "ldm" not in err


# ---- 3. Frechet distance on near-singular covariances ----

def statistics(rows: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    features = np.maximum(np.random.default_rng(seed).normal(size=(rows, dim)), 0)
    return features.mean(0), np.cov(features, rowvar=False)


def test_frechet_equals_scipy_when_well_conditioned(capsys):
    (mu1, s1), (mu2, s2) = statistics(400, 6, 0), statistics(300, 6, 1)
    expected = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    assert distribution.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    assert capsys.readouterr().err == ""


def test_frechet_rank_deficient_is_finite_quiet_and_noted(capsys):
    (mu1, s1), (mu2, s2) = statistics(5, 200, 0), statistics(5, 200, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = distribution.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value > 0
    assert [str(w.message) for w in caught] == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "near-singular" in err and "1e-06 * I" in err and "pytorch-fid" in err


def test_frechet_of_identical_rank_deficient_sets_stays_zero(capsys):
    mu, sigma = statistics(5, 200, 0)
    assert distribution.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    assert "near-singular" in capsys.readouterr().err


# ---- 4. grid.png of --paired LDM tiles ----

def paired_tiles(count: int) -> list[dict]:
    return [{"image": torch.full((3, 8, 8), -1.0), "label": torch.tensor(i % 2), "meta": {"name": f"tile{i:02d}"}}
            for i in range(count)]


@pytest.mark.parametrize("count, rows", [(11, 8), (3, 3)])
def test_paired_writes_a_labelled_real_generated_grid(tmp_path, monkeypatch, count, rows):
    monkeypatch.setattr(latents, "sample_tiles", lambda model, diffusion, labels, n, *rest, **kw: torch.ones(n, 3, 8, 8))
    seen = []
    real_grid = latents.labelled_grid
    monkeypatch.setattr(latents, "labelled_grid", lambda images, captions, **kw: seen.append(captions) or real_grid(images, captions, **kw))
    folder = tmp_path / "paired"
    assert latents.generate_paired(pixel_model(), None, paired_tiles(count), SamplingSpec(), 4, 0, CPU, folder) == count
    assert seen == [[[f"real tile{i:02d}.png", "generated"] for i in range(rows)]]
    grid = np.asarray(Image.open(folder / "grid.png"))
    assert grid.shape[1] == 2 * (16 + 4) + 4 and grid.shape[0] > rows * 16
    assert (grid == 0).all(-1).any() and (grid == 255).all(-1).any()


# ---- 5. grid.png of SDM synthesis ----

class Layouts:
    """The parts of LayoutPatches that synthesise reads."""

    maps = None

    def __init__(self, size: int, count: int = 3):
        self.samples = [{"semantic": torch.zeros(2, size, size), "inst_mask": torch.zeros(size, size, dtype=torch.int32),
                         "image": torch.zeros(3, size, size), "meta": {"name": f"layout{i}"}} for i in range(count)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


@pytest.mark.parametrize("size, samples, jobs, scales, rows, width, columns", [
    (32, 20, 1, [1.5, 3.0], 16, 128, ["layout", "generated s=1.5", "generated s=3", "real"]),
    (64, 3, 2, [2.0], 3, 128, ["layout", "m0 s=2", "m1 s=2", "real"]),
    (128, 2, 1, [1.0], 2, 128, ["layout", "generated s=1", "real"]),
])
def test_sdm_grid_is_readable(tmp_path, monkeypatch, size, samples, jobs, scales, rows, width, columns):
    monkeypatch.setattr(synthesis.sampling, "sample", lambda model, diffusion, x_T, *a, **kw: x_T.clamp(-1, 1))
    monkeypatch.setattr(synthesis, "maps_to_picture", lambda maps, options: np.zeros(maps.shape[1:] + (3,), np.uint8))
    seen = []
    real_grid = synthesis.labelled_grid
    monkeypatch.setattr(synthesis, "labelled_grid", lambda images, captions, **kw: seen.append(captions) or real_grid(images, captions, **kw))
    job_list = [synthesis.SynthesisJob(None, None, f"m{j}") for j in range(jobs)]
    folder = tmp_path / "sdm"
    written = synthesis.synthesise(job_list, Layouts(size), scales, samples, 8, "in_order", SamplingSpec(), 0, CPU, folder)
    assert written == jobs * len(scales) * samples
    assert seen == [[columns] * rows]
    grid = Image.open(folder / "grid.png")
    assert grid.size[0] == len(columns) * (width + 4) + 4 and grid.size[1] > rows * width
