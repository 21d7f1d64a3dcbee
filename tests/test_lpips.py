from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision

from diffusion.lpips import LPIPS

RELU_TAPS = {"vgg16": (3, 8, 15, 22, 29), "alexnet": (1, 4, 7, 9, 11)}
CHANNELS = {"vgg16": (64, 128, 256, 512, 512), "alexnet": (64, 192, 384, 256, 256)}


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """Randomly initialised torchvision networks and their state dicts on disk (the classifier's bias kept, so
    the file also carries keys the perceptual distance ignores)."""
    folder = tmp_path_factory.mktemp("backbones")
    out = {}
    for name in ("vgg16", "alexnet"):
        torch.manual_seed(0)
        network = getattr(torchvision.models, name)(weights=None).eval()
        state = {k: v for k, v in network.state_dict().items() if k.startswith("features.") or k == "classifier.6.bias"}
        path = folder / f"{name}.pth"
        torch.save(state, path)
        out[name] = (path, network)
    return out


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, size // 4, size // 4, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def reference_distance(
    network: torch.nn.Module, taps: tuple[int, ...], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The uncalibrated LPIPS distance computed directly on the torchvision network."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    total = torch.zeros(x.shape[0])
    hx, hy = (x - shift) / scale, (y - shift) / scale
    for index, layer in enumerate(network.features[: taps[-1] + 1]):
        hx, hy = layer(hx.clone()), layer(hy.clone())
        if index in taps:
            nx = hx / (hx.norm(dim=1, keepdim=True) + 1e-10)
            ny = hy / (hy.norm(dim=1, keepdim=True) + 1e-10)
            total += ((nx - ny) ** 2).mean(dim=(1, 2, 3))
    return total


@pytest.mark.parametrize("backbone", ["vgg16", "alexnet"])
def test_distance_properties(backbones, backbone):
    path, network = backbones[backbone]
    metric = LPIPS(backbone, path)
    assert not metric.calibrated
    x, y = images(seed=0), images(seed=1)
    with torch.no_grad():
        same = metric(x, x)
        forward, backward = metric(x, y), metric(y, x)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
        by_level = torch.stack([metric(x, x + level * noise) for level in (0.05, 0.2, 0.8)])
        reference = reference_distance(network, RELU_TAPS[backbone], x, y)
    assert same.shape == (2,) and torch.equal(same, torch.zeros(2))
    assert (forward > 0).all()
    torch.testing.assert_close(forward, backward)
    assert (by_level[1:] > by_level[:-1]).all()
    torch.testing.assert_close(forward, reference, rtol=1e-4, atol=1e-6)


def test_frozen_eval_and_differentiable_in_the_input(backbones):
    metric = LPIPS("alexnet", backbones["alexnet"][0])
    metric.train()
    assert not metric.training and not any(m.training for m in metric.modules())
    assert not any(p.requires_grad for p in metric.parameters())
    x = images().requires_grad_(True)
    metric(x, images(seed=3)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def lpips_layout(state: dict[str, torch.Tensor], taps: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """A torchvision feature state dict renamed to the LPIPS package layout `net.sliceK.N.*`."""
    bounds = [-1, *taps]
    out = {}
    for key, value in state.items():
        match = re.match(r"features\.(\d+)\.(.+)", key)
        if match:
            index = int(match.group(1))
            slice_number = next(k for k in range(1, 6) if bounds[k - 1] < index <= bounds[k])
            out[f"net.slice{slice_number}.{index}.{match.group(2)}"] = value
    return out


def test_calibration_weights_from_either_file_layout(backbones, tmp_path):
    path, _ = backbones["vgg16"]
    uniform = {f"lin{k}.model.1.weight": torch.full((1, c, 1, 1), 1.0 / c) for k, c in enumerate(CHANNELS["vgg16"])}
    doubled = {key: 2 * value for key, value in uniform.items()}
    torch.save(doubled, tmp_path / "lin.pth")
    full = {**lpips_layout(torch.load(path, weights_only=True), RELU_TAPS["vgg16"]), **uniform}
    torch.save(full, tmp_path / "full_lpips.pth")

    plain = LPIPS("vgg16", path)
    calibrated_full = LPIPS("vgg16", tmp_path / "full_lpips.pth")
    calibrated_split = LPIPS("vgg16", path, linear_weights_path=tmp_path / "lin.pth")
    assert calibrated_full.calibrated and calibrated_split.calibrated
    x, y = images(seed=4), images(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(calibrated_full(x, y), plain(x, y))
        torch.testing.assert_close(calibrated_split(x, y), 2 * plain(x, y))


def test_missing_and_unfit_files(backbones, tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth.*--perceptual_weights"):
        LPIPS("vgg16", missing)
    with pytest.raises(FileNotFoundError, match="--perceptual_weights"):
        LPIPS("vgg16", None)
    with pytest.raises(ValueError, match=r"alexnet\.pth does not fit a torchvision vgg16"):
        LPIPS("vgg16", backbones["alexnet"][0])
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth"):
        LPIPS("vgg16", tmp_path / "list.pth")
    negative = {f"lin{k}.model.1.weight": -torch.ones(1, c, 1, 1) for k, c in enumerate(CHANNELS["alexnet"])}
    torch.save(negative, tmp_path / "negative.pth")
    with pytest.raises(ValueError, match=r"negative\.pth.*non-negative"):
        LPIPS("alexnet", backbones["alexnet"][0], tmp_path / "negative.pth")
    with pytest.raises(FileNotFoundError, match="--lpips_weights"):
        LPIPS("alexnet", backbones["alexnet"][0], tmp_path / "absent_lin.pth")
    with pytest.raises(ValueError, match="backbone"):
        LPIPS("resnet", backbones["alexnet"][0])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        LPIPS("alexnet", backbones["alexnet"][0])(images(), images(size=64))
