"""Trajectory recording: which steps are kept, GIF frames and their panels, the PNG strip, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.samplers import ddim_sample
from diffusion.schedules import make_betas
from recipes.trajectory import FrameLayout, TrajectoryRecorder

SIZE = 16


def fake_loop(recorder: TrajectoryRecorder, steps: int, batch: int = 3) -> None:
    """A sampler-shaped loop: x_t is a flat grey that brightens, pred_x0 a fixed left-to-right ramp."""
    ramp = torch.linspace(-1, 1, SIZE).expand(batch, 3, SIZE, SIZE)
    for step_index in range(steps):
        x_t = torch.full((batch, 3, SIZE, SIZE), -0.9 + 1.8 * step_index / max(steps - 1, 1))
        recorder(step_index, 100 - 10 * step_index, x_t, ramp)


def panel(frame: Image.Image, layout: FrameLayout, row: int, column: int) -> np.ndarray:
    return np.asarray(frame.convert("RGB").crop(layout.box(row, column)), dtype=np.float32)


@pytest.mark.parametrize(
    "every, steps, expected",
    [(4, 10, [0, 4, 8, 9]), (3, 10, [0, 3, 6, 9]), (1, 3, [0, 1, 2]), (20, 5, [0, 4]), (5, 1, [0])],
)
def test_recorder_keeps_first_every_kth_and_last(every, steps, expected):
    recorder = TrajectoryRecorder(every=every)
    fake_loop(recorder, steps)
    assert recorder.step_indices == expected
    assert [f.t for f in recorder.frames] == [100 - 10 * i for i in expected]


def test_recorder_with_ddim_keeps_cpu_copies_of_the_first_elements():
    diffusion = GaussianDiffusion(make_betas("linear", 50))
    recorder = TrajectoryRecorder(every=4, max_images=2)
    x_T = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ddim_sample(diffusion, lambda x, t: 0.5 * x, x_T, steps=10, callback=recorder)
    assert recorder.step_indices == [0, 4, 8, 9]
    frames = recorder.frames
    assert frames[0].t == 49 and frames[-1].t == 0
    assert all(f.x_t.shape == (2, 3, 8, 8) and f.x_t.device.type == "cpu" for f in frames)
    assert torch.equal(frames[0].x_t, x_T[:2])
    assert not torch.allclose(frames[-1].x_t, frames[0].x_t)
    assert not torch.allclose(frames[0].pred_x0, frames[0].x_t)


def test_step_zero_starts_a_new_trajectory_and_steps_must_increase():
    recorder = TrajectoryRecorder(every=2)
    fake_loop(recorder, 7)
    fake_loop(recorder, 3)
    assert recorder.step_indices == [0, 2]
    with pytest.raises(ValueError, match="step_index"):
        recorder(2, 0, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="step_index"):
        TrajectoryRecorder()(1, 0, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


def test_gif_has_one_frame_per_kept_step_and_the_layout_size(tmp_path):
    recorder = TrajectoryRecorder(every=3, max_images=2)
    fake_loop(recorder, 8, batch=4)
    path = recorder.save_gif(tmp_path / "out" / "trajectory.gif", duration_ms=60, scale=3)
    layout = FrameLayout(rows=2, height=SIZE, width=SIZE, scale=3)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 4  # steps 0, 3, 6 and the last, 7
        assert gif.size == layout.size
        assert gif.size[0] > 2 * SIZE * 3 and gif.size[1] > 2 * SIZE * 3
        assert gif.info.get("loop") == 0
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert durations[:-1] == [60, 60, 60] and durations[-1] > 60


def test_gif_panels_show_x_t_beside_pred_x0(tmp_path):
    recorder = TrajectoryRecorder(every=2, max_images=3)
    fake_loop(recorder, 5)
    path = recorder.save_gif(tmp_path / "trajectory.gif", scale=2)
    layout = FrameLayout(rows=3, height=SIZE, width=SIZE, scale=2)
    with Image.open(path) as gif:
        gif.seek(0)
        first = gif.convert("RGB")
        gif.seek(gif.n_frames - 1)
        last = gif.convert("RGB")
    for row in range(3):
        x_t, pred = panel(first, layout, row, 0), panel(first, layout, row, 1)
        assert x_t.std() < 3 and abs(x_t.mean() - 0.05 * 255) < 6  # flat grey at -0.9
        assert pred[:, -1].mean() - pred[:, 0].mean() > 200  # ramp from black to white
        assert np.abs(x_t - pred).mean() > 40
    assert panel(last, layout, 0, 0).mean() > 240  # x_t reached +0.9
    assert np.abs(panel(last, layout, 0, 1) - panel(first, layout, 0, 1)).mean() < 6


def test_strip_and_grey_images(tmp_path):
    recorder = TrajectoryRecorder(every=1, max_images=1)
    for step in range(10):
        recorder(step, 9 - step, torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
    path = recorder.save_strip(tmp_path / "strip.png", count=4, scale=2)
    frame = FrameLayout(rows=1, height=8, width=8, scale=2).size
    with Image.open(path) as strip:
        assert strip.format == "PNG" and strip.height == frame[1]
        assert strip.width == 4 * frame[0] + 3 * 4
    assert recorder.save_gif(tmp_path / "grey.gif").is_file()


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="every"):
        TrajectoryRecorder(every=0)
    with pytest.raises(ValueError, match="no steps recorded"):
        TrajectoryRecorder().save_gif(tmp_path / "empty.gif")
    recorder = TrajectoryRecorder()
    with pytest.raises(ValueError, match="one shape"):
        recorder(0, 9, torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    recorder(0, 9, torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        recorder.save_gif(tmp_path / "latent.gif")
    assert not (tmp_path / "latent.gif").exists()
