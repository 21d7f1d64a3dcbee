"""Pictures people look at: labelled image strips and grids, and the score-against-condition plot."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """3xHxW in [-1, 1] -> HxWx3 uint8."""
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return array.permute(1, 2, 0).cpu().numpy()


def labelled_grid(
    images: Sequence[Sequence[torch.Tensor]],
    captions: Sequence[Sequence[str]],
    scale: int = 2,
    pad: int = 4,
    caption_lines: int = 2,
) -> Image.Image:
    """A white sheet with rows of images, each with its caption (one or more lines) above it."""
    rows, cols = len(images), max(len(r) for r in images)
    h, w = images[0][0].shape[1] * scale, images[0][0].shape[2] * scale
    font = ImageFont.load_default(size=max(10, min(14, w // 8)))
    line = font.getbbox("Ag")[3] + 2
    cell_h = h + caption_lines * line + pad
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            x, y = pad + c * (w + pad), pad + r * cell_h
            for i, text in enumerate(captions[r][c].split("\n")[:caption_lines]):
                draw.text((x, y + i * line), text, fill="black", font=font)
            tile = Image.fromarray(to_uint8(image)).resize((w, h), Image.NEAREST)
            sheet.paste(tile, (x, y + caption_lines * line))
    return sheet


def score_plot(conditions: np.ndarray, scores: np.ndarray, path: Path, title: str) -> None:
    """Mean ensemble score against the target condition, with a +-1 std band over sequences.

    `scores` is (S, K): one row per sequence, one column per condition value.
    """
    mean, std = scores.mean(0), scores.std(0)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    for row in scores:
        ax.plot(conditions, row, color="0.75", linewidth=0.8)
    ax.fill_between(conditions, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), alpha=0.3, color="C0", label="± 1 std")
    ax.plot(conditions, mean, color="C0", marker="o", label="mean over sequences")
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.4", linewidth=0.8, label="ideal")
    ax.set_xlabel("condition (target mitosis score)")
    ax.set_ylabel("ensemble mitosis score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
