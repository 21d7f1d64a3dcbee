"""--model_type segmentation: the CE + Dice loss, the border left out, pooled and per-slide IoU, batches mixed
at --ratios, bad inputs, and stain jitter that changes colours but not masks."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from data.tile_pairs import MixedTilePairs, TilePairs, batch_counts, list_pairs, slide_names, write_demo_tile_pairs
from recipes.segmentation import ce_dice_loss, confusion, segmentation_metrics


def test_loss_on_a_hand_case():
    # Equal logits: p = 0.5 everywhere. CE = ln 2; foreground Dice = (2 * 0.5 + 1) / (1 + 1 + 1) = 2/3.
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    expected = 0.1 * math.log(2) + 0.9 * (1 - 2 / 3)
    assert float(ce_dice_loss(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_background_is_not_in_the_dice_term():
    # All pixels background and predicted background with certainty: CE ~ 0, the foreground Dice term is
    # (0 + 1) / (0 + 0 + 1) = 1, so the loss is ~ 0 (a Dice over the background would not change that, but
    # predicting background on a foreground pixel must cost Dice).
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    logits = torch.stack([torch.full((2, 2), 20.0), torch.full((2, 2), -20.0)])[None]
    assert float(ce_dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-6)
    target[0, 0, 0] = 1
    assert float(ce_dice_loss(logits, target)) > 0.9 * 0.5


def test_border_pixels_are_left_out():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6)
    target = torch.randint(0, 3, (2, 6, 6))
    changed = logits.clone()
    changed[..., 0, :] = torch.randn(2, 3, 6) * 10  # only the border rows / columns change
    changed[..., :, -1] = torch.randn(2, 3, 6) * 10
    assert float(ce_dice_loss(logits, target, overlap=1)) == pytest.approx(float(ce_dice_loss(changed, target, overlap=1)))
    inner = float(ce_dice_loss(logits[..., 1:-1, 1:-1], target[..., 1:-1, 1:-1]))
    assert float(ce_dice_loss(logits, target, overlap=1)) == pytest.approx(inner, rel=1e-6)
    assert float(ce_dice_loss(logits, target)) != pytest.approx(inner, rel=1e-6)
    assert confusion(logits.argmax(1), target, 3, overlap=2).sum() == 2 * 2 * 2


def test_pooled_and_per_slide_iou_by_hand():
    # slide a: truth 1 1 0 0, predicted 1 0 0 0 -> class-1 IoU 1/2; slide b: truth 1 0 0 0, predicted 1 1 1 0 -> 1/3.
    a = confusion(torch.tensor([1, 0, 0, 0]).view(1, 4), torch.tensor([1, 1, 0, 0]).view(1, 4), 2)
    b = confusion(torch.tensor([1, 1, 1, 0]).view(1, 4), torch.tensor([1, 0, 0, 0]).view(1, 4), 2)
    assert a.tolist() == [[2, 0], [1, 1]] and b.tolist() == [[1, 2], [0, 1]]
    metrics = segmentation_metrics(a + b, {"a": a, "b": b})
    assert metrics["iou"] == pytest.approx(2 / 5)  # TP 2, FP 2, FN 1
    assert metrics["iou_class1"] == pytest.approx(2 / 5)
    assert metrics["iou_class0"] == pytest.approx(3 / 6)  # TP 3, FP 1, FN 2
    assert metrics["dice"] == pytest.approx(4 / 7)
    assert metrics["slide_iou_mean"] == pytest.approx(5 / 12)
    assert metrics["slide_iou_var"] == pytest.approx(1 / 144)


def test_slide_rule():
    assert slide_names(["s1_000", "s1_001", "s2_000"]) == {"s1_000": "s1", "s1_001": "s1", "s2_000": "s2"}
    assert slide_names(["s1_000", "tile7"]) == {"s1_000": "s1_000", "tile7": "tile7"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("seg")
    return (write_demo_tile_pairs(base / "synthetic", slides=2, tiles_per_slide=2, size=16, seed=1),
            write_demo_tile_pairs(base / "real", slides=3, tiles_per_slide=2, size=16, seed=2))


def test_every_batch_mixes_the_folders_at_the_ratios(folders):
    sources = [TilePairs(list_pairs(f), 2) for f in folders]
    mixed = MixedTilePairs(sources, [0.25, 0.75], batch_size=8, seed=0)
    for batch in range(5):
        picked = [mixed.source_of_slot(batch * 8 + i) for i in range(8)]
        assert picked.count(0) == 2 and picked.count(1) == 6
    assert {mixed[i]["meta"]["source"] for i in range(8)} == {"synthetic", "real"}
    rng = np.random.default_rng(0)
    counts = np.array([batch_counts([0.2, 0.3, 0.5], 4, rng) for _ in range(4000)])
    assert (counts.sum(1) == 4).all() and (counts.min(0) >= 0).all()
    assert counts.mean(0) == pytest.approx([0.8, 1.2, 2.0], abs=0.06)
    assert set(counts[:, 0]) <= {0, 1}


def test_stain_jitter_changes_colours_not_masks(folders):
    pairs = list_pairs(folders[0])
    plain, jittered = TilePairs(pairs, 2, seed=3), TilePairs(pairs, 2, stain_augment=True, seed=3)
    for i in range(len(pairs)):
        a, b = plain[i], jittered[i]
        assert torch.equal(a["semantic"], b["semantic"])
        assert (a["image"] - b["image"]).abs().max() > 0.01
        assert torch.equal(b["image"], jittered[i]["image"])  # seeded


def argv(out: Path, **flags) -> list[str]:
    base = {"model_type": "segmentation", "dataset": "seg_tiles", "out_dir": out, "max_steps": 1, "batch_size": 2,
            "num_workers": 0, "tile_size": 16}
    base.update(flags)
    return [item for k, v in base.items() for item in (f"--{k}", str(v))]


def test_bad_inputs_exit_2_with_their_message(folders, tmp_path, capsys):
    synthetic, real = folders
    assert train.main(argv(tmp_path / "r1", datasets=f"{synthetic},{real}", ratios="0.2,0.3,0.5")) == 2
    assert "--ratios has 3 values" in capsys.readouterr().err
    assert train.main(argv(tmp_path / "r2", datasets=f"{synthetic},{real}", ratios="0.5,0.6")) == 2
    assert "--ratios must be non-negative shares summing to 1" in capsys.readouterr().err

    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    assert train.main(argv(tmp_path / "r3", data_root=empty)) == 2
    assert f"{empty / 'images'}: no .png tiles" in capsys.readouterr().err

    bad = write_demo_tile_pairs(tmp_path / "bad", slides=2, tiles_per_slide=1, size=16)
    mask = sorted((bad / "masks").glob("*.png"))[0]
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(mask)
    assert train.main(argv(tmp_path / "r4", data_root=bad)) == 2
    err = capsys.readouterr().err
    assert str(mask) in err and "mask is 8x16 px" in err and "Traceback" not in err

    assert train.main(argv(tmp_path / "r5", data_root=real, seg_classes=1)) == 2
    assert "--seg_classes must be at least 2" in capsys.readouterr().err
    assert train.main(argv(tmp_path / "r6", data_root=real, seg_weights=tmp_path / "none.pt")) == 2
    assert f"--seg_weights: file {tmp_path / 'none.pt'} does not exist" in capsys.readouterr().err
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 7))  # nothing written


def test_seg_weights_encoder_or_whole_network(tmp_path):
    from torchvision.models import resnet18

    from common.errors import ConfigError
    from recipes.segmentation import SegmentationNet, load_seg_weights

    net = SegmentationNet("resnet18", 2)
    tv = resnet18(weights=None).state_dict()
    torch.save(tv, tmp_path / "encoder.pt")
    assert load_seg_weights(net, tmp_path / "encoder.pt") == "encoder"
    assert torch.equal(net.net.encoder.conv1.weight, tv["conv1.weight"])
    other = SegmentationNet("resnet18", 2)
    torch.save(other.state_dict(), tmp_path / "whole.pt")
    assert load_seg_weights(net, tmp_path / "whole.pt") == "network"
    assert torch.equal(net.net.decoder.blocks[0].conv1[0].weight, other.net.decoder.blocks[0].conv1[0].weight)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match="wrong.pt does not fit the encoder"):
        load_seg_weights(net, tmp_path / "wrong.pt")
