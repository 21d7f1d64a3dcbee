"""Reverse-process pictures: record x_t and the predicted x_0 while a sampler runs, then write a GIF or a strip.

A TrajectoryRecorder is passed as `callback` to the samplers of diffusion/samplers.py. Each GIF frame shows,
for every recorded batch element, x_t beside the x_0 predicted from it, under a "t=..." header.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from common.figures import to_uint8

PAD = 4
HEADER_LINES = 2
LAST_FRAME_HOLD = 12
COLUMN_TITLES = ("x_t", "pred x_0")


@dataclass(frozen=True)
class TrajectoryFrame:
    """One recorded step: its index in the sampler loop, its timestep, x_t and pred_x0 (CPU, N x C x H x W)."""

    step_index: int
    t: int
    x_t: torch.Tensor
    pred_x0: torch.Tensor


@dataclass(frozen=True)
class FrameLayout:
    """Where the panels of a frame lie: `rows` elements of `height` x `width` px images, shown `scale` times."""

    rows: int
    height: int
    width: int
    scale: int

    @property
    def line(self) -> int:
        """Height in px of one line of text."""
        return font(self.scale).getbbox("Ag")[3] + 2

    @property
    def top(self) -> int:
        """Height in px of the header (t=... and the column titles)."""
        return PAD + HEADER_LINES * self.line

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frame in px."""
        return (PAD + 2 * (self.width * self.scale + PAD), self.top + self.rows * (self.height * self.scale + PAD))

    def box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the panel of element `row`; column 0 is x_t, column 1 pred x_0."""
        w, h = self.width * self.scale, self.height * self.scale
        left, top = PAD + column * (w + PAD), self.top + row * (h + PAD)
        return left, top, left + w, top + h


def font(scale: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=10 + 2 * min(scale - 1, 2))


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """A 1- or 3-channel C x H x W image as 3 x H x W."""
    if image.shape[0] == 3:
        return image
    if image.shape[0] == 1:
        return image.expand(3, -1, -1)
    raise ValueError(
        "trajectory images must have 1 or 3 channels (decode latents before recording), "
        f"got shape {tuple(image.shape)}"
    )


def render_frame(frame: TrajectoryFrame, scale: int = 2, caption: str | None = None) -> Image.Image:
    """One picture of a step: the header `caption` (default "t=..."), then x_t | pred x_0 for each element."""
    rows, _, height, width = frame.x_t.shape
    layout = FrameLayout(rows, height, width, scale)
    sheet = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(sheet)
    text_font = font(scale)
    draw.text((PAD, PAD), f"t={frame.t}" if caption is None else caption, fill="black", font=text_font)
    for column, title in enumerate(COLUMN_TITLES):
        draw.text((layout.box(0, column)[0], PAD + layout.line), title, fill="black", font=text_font)
    for row in range(rows):
        for column, images in enumerate((frame.x_t, frame.pred_x0)):
            left, top, right, bottom = layout.box(row, column)
            panel = Image.fromarray(to_uint8(to_rgb(images[row])))
            sheet.paste(panel.resize((right - left, bottom - top), Image.NEAREST), (left, top))
    return sheet


def check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class TrajectoryRecorder:
    """Sampler callback that keeps (t, x_t, pred_x0) every `every` steps, and always the first and last step,
    for the first `max_images` batch elements, on the CPU.

    A call with step_index 0 starts a new trajectory (the previous one is dropped).
    """

    def __init__(self, every: int = 10, max_images: int = 4):
        check_positive("every", every)
        check_positive("max_images", max_images)
        self.every = int(every)
        self.max_images = int(max_images)
        self.reset()

    def reset(self) -> None:
        """Forget every recorded step."""
        self._kept: list[TrajectoryFrame] = []
        self._latest: TrajectoryFrame | None = None

    def __call__(self, step_index: int, t: int, x_t: torch.Tensor, pred_x0: torch.Tensor) -> None:
        if step_index == 0:
            self.reset()
        elif self._latest is None or step_index <= self._latest.step_index:
            previous = None if self._latest is None else self._latest.step_index
            raise ValueError(f"step_index must follow the previous step ({previous}), got {step_index}")
        if x_t.shape != pred_x0.shape or x_t.ndim != 4:
            raise ValueError(
                "x_t and pred_x0 must be N x C x H x W of one shape, "
                f"got {tuple(x_t.shape)} and {tuple(pred_x0.shape)}"
            )
        n = self.max_images
        frame = TrajectoryFrame(
            step_index=int(step_index),
            t=int(t),
            x_t=x_t[:n].detach().to("cpu", torch.float32, copy=True),
            pred_x0=pred_x0[:n].detach().to("cpu", torch.float32, copy=True),
        )
        if step_index % self.every == 0:
            self._kept.append(frame)
        self._latest = frame

    @property
    def frames(self) -> list[TrajectoryFrame]:
        """The recorded steps in sampling order: every `every`-th step and the last one seen."""
        if self._latest is None:
            return []
        if self._kept and self._kept[-1] is self._latest:
            return list(self._kept)
        return [*self._kept, self._latest]

    @property
    def step_indices(self) -> list[int]:
        return [frame.step_index for frame in self.frames]

    def _require_frames(self) -> list[TrajectoryFrame]:
        frames = self.frames
        if not frames:
            raise ValueError("no steps recorded: pass the recorder as the sampler's callback first")
        return frames

    def save_gif(self, path: str | Path, duration_ms: int = 80, scale: int = 2) -> Path:
        """Write an animated GIF (looping) with one frame per recorded step; the last frame stays longer."""
        check_positive("duration_ms", duration_ms)
        check_positive("scale", scale)
        frames = self._require_frames()
        pictures = [render_frame(frame, scale) for frame in frames]
        durations = [int(duration_ms)] * (len(pictures) - 1) + [int(duration_ms) * LAST_FRAME_HOLD]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pictures[0].save(
            path, format="GIF", save_all=True, append_images=pictures[1:], duration=durations, loop=0, disposal=1
        )
        return path

    def save_strip(self, path: str | Path, count: int = 6, scale: int = 2) -> Path:
        """Write a PNG of `count` recorded steps (evenly spread, first and last included) side by side."""
        check_positive("count", count)
        check_positive("scale", scale)
        frames = self._require_frames()
        chosen = sorted({int(i) for i in np.round(np.linspace(0, len(frames) - 1, min(count, len(frames))))})
        pictures = [render_frame(frames[i], scale) for i in chosen]
        width = sum(p.width for p in pictures) + PAD * (len(pictures) - 1)
        strip = Image.new("RGB", (width, pictures[0].height), "white")
        left = 0
        for picture in pictures:
            strip.paste(picture, (left, 0))
            left += picture.width + PAD
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        strip.save(path, format="PNG")
        return path
