"""CPU threads: one per physical core by default, OMP_NUM_THREADS or --threads when given."""
from __future__ import annotations

import io
from unittest import mock

import pytest
import torch

from common import runtime

HYPERTHREADED = "".join(f"processor\t: {p}\nphysical id\t: 0\ncore id\t\t: {p % 2}\n\n" for p in range(4))


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_hyper_threads_of_one_core_count_once():
    with mock.patch("builtins.open", return_value=io.StringIO(HYPERTHREADED)), \
            mock.patch.object(runtime.os, "sched_getaffinity", return_value={0, 1, 2, 3}):
        assert runtime.physical_cores() == 2


def test_only_the_cores_of_the_affinity_count():
    with mock.patch("builtins.open", return_value=io.StringIO(HYPERTHREADED)), \
            mock.patch.object(runtime.os, "sched_getaffinity", return_value={0}):
        assert runtime.physical_cores() == 1


@pytest.mark.parametrize("env, given, expected", [("3", None, 3), ("", None, "cores"), ("3", 1, 1), ("x", None, "cores")])
def test_set_threads_takes_the_flag_then_omp_num_threads_then_the_cores(monkeypatch, env, given, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", env)
    want = runtime.physical_cores() if expected == "cores" else expected
    assert runtime.set_threads(given) == want and torch.get_num_threads() == want


def test_train_and_inference_take_threads(synthetic_root, tmp_path, monkeypatch):
    import inference
    import train
    from conftest import tiny_config
    from test_train import TINY_UNET

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_dir = train.run(tiny_config(synthetic_root, tmp_path, **{**TINY_UNET, "max_steps": 1, "threads": 1}))
    assert torch.get_num_threads() == 1
    assert inference.main(["--ckpt", str(run_dir / "last.pt"), "--threads", "0", "--out_dir", str(tmp_path / "o")]) == 2
