"""Run folders of train.py and inference.py: never delete what the toolkit did not write, save progress on every
stop, one run per folder, no writes through links, checkpoints checked before anything is built."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch

import inference
import train
from common.checkpoint import save_checkpoint
from common.errors import Stopped
from common.files import MARKER
from common.run_folder import RunLock
from conftest import ROOT, tiny_config
from trainer import StopSignals

TINY = {"model_type": "diffusion", "dim": 8, "dim_mults": "1,2", "num_res_blocks": 1, "attention_resolutions": 8,
        "num_head_channels": 8, "timesteps": 50, "soft_vs_hard": "soft"}


def args_for(root: Path, out: Path, **extra) -> list[str]:
    return tiny_config(root, out, **{**TINY, **extra})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (links as their targets' names) with its bytes."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(folder))] = os.readlink(path).encode()
        elif path.is_file():
            files[str(path.relative_to(folder))] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory) -> Path:
    """A finished 3-step run with step_N.pt files, to copy."""
    out = tmp_path_factory.mktemp("finished")
    return train.run(args_for(synthetic_root, out, max_steps=3, val_every=0, save_every=1))


def copy_run(source: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", str(source), str(dest)], check=True)
    return dest


def error_of(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------------------------- data loss

def test_a_date_with_path_parts_is_refused_and_nothing_is_deleted(synthetic_root, tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    (tmp_path / "precious.txt").write_text("keep")
    before = snapshot(tmp_path)
    assert train.main(args_for(synthetic_root, out, date="x/../..") + ["--overwrite"]) == 2
    assert "--date" in error_of(capsys)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind, words", [
    ("foreign", "not written by this toolkit"),
    ("symlink", "symbolic link"),
    ("holds_init", "which this run reads"),
])
def test_overwrite_replaces_only_a_folder_the_toolkit_wrote(kind, words, synthetic_root, finished_run, tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    run_dir = out / "diffusion_synthetic"
    extra = {}
    if kind == "foreign":
        run_dir.mkdir()
        (run_dir / "notes.txt").write_text("someone's notes")
    elif kind == "symlink":
        target = tmp_path / "elsewhere"
        target.mkdir()
        (target / "data.txt").write_text("not ours")
        run_dir.symlink_to(target)
    else:
        copy_run(finished_run, run_dir)
        extra["init_from"] = str(run_dir / "last.pt")
    before = snapshot(tmp_path)
    assert train.main(args_for(synthetic_root, out, **extra) + ["--overwrite"]) == 2
    assert words in error_of(capsys)
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_run_folder_the_toolkit_wrote(synthetic_root, finished_run, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    run_dir = copy_run(finished_run, out / "diffusion_synthetic")
    (run_dir / "stale.txt").write_text("from the earlier run")
    assert train.main(args_for(synthetic_root, out, max_steps=1) + ["--overwrite"]) == 0
    assert (run_dir / MARKER).is_file() and not (run_dir / "stale.txt").exists()


@pytest.mark.parametrize("where", ["runs_parent", "run_folder"])
def test_inference_overwrite_never_deletes_the_checkpoint_it_reads(where, finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path / "diffusion_synthetic")
    out = tmp_path if where == "runs_parent" else run_dir
    before = snapshot(tmp_path)
    argv = ["--ckpt", str(run_dir / "last.pt"), "--out_dir", str(out), "--overwrite", "--device", "cpu"]
    assert inference.main(argv) == 2
    err = error_of(capsys)
    assert "not written by this toolkit" in err or "which this run reads" in err
    assert snapshot(tmp_path) == before


def test_a_failed_start_leaves_no_folder_that_blocks_the_rerun(synthetic_root, tmp_path, capsys):
    nan = torch.tensor(float("nan"), requires_grad=True)
    with mock.patch("recipes.tasks.DiffusionTask.training_loss", return_value=nan):
        assert train.main(args_for(synthetic_root, tmp_path, max_steps=2)) == 2
    assert "no checkpoint was written" in error_of(capsys)
    assert not (tmp_path / "diffusion_synthetic").exists()
    assert train.main(args_for(synthetic_root, tmp_path, max_steps=1)) == 0


# ------------------------------------------------------------------------------------- saving progress

def test_sigterm_saves_last_pt_and_resume_continues(synthetic_root, tmp_path):
    argv = args_for(synthetic_root, tmp_path, max_steps=100000, val_every=0, num_workers=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "diffusion_synthetic" / "train_log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.is_file() or log.read_text().count("\n") < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopped at step" in err and "last.pt" in err
    state = torch.load(tmp_path / "diffusion_synthetic" / "last.pt", weights_only=True)
    assert state["step"] >= 2
    assert train.main(["--resume", str(tmp_path / "diffusion_synthetic"), "--max_steps", str(state["step"] + 1)]) == 0


def test_a_signal_during_a_save_waits_for_the_save():
    signals = StopSignals()
    with signals:
        with pytest.raises(Stopped) as stopped:
            with signals.protect():
                os.kill(os.getpid(), signal.SIGTERM)
                finished = True
        assert finished and stopped.value.signum == signal.SIGTERM
        with signals.protect(stop_after=False):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is not signals._handle


def test_last_pt_is_written_at_every_validation(synthetic_root, tmp_path):
    saved = []
    real = train.Trainer.save_progress

    def record(self):
        real(self)
        saved.append(torch.load(self.run_dir / "last.pt", weights_only=True)["step"])

    with mock.patch.object(train.Trainer, "save_progress", record):
        train.run(args_for(synthetic_root, tmp_path, max_steps=4, val_every=2))
    assert saved == [2, 4]


def test_resume_takes_the_newest_readable_checkpoint(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path / "run")
    (run_dir / "last.pt").write_bytes(b"cut off")
    (run_dir / ".last.pt.x1y2.tmp").write_bytes(b"partial")
    assert train.main(["--resume", str(run_dir), "--max_steps", "4"]) == 0
    captured = capsys.readouterr()
    assert "pt (step 3)" in captured.err and "last.pt cannot be read" in captured.err
    assert "partial file of an interrupted save" in captured.out
    assert not (run_dir / ".last.pt.x1y2.tmp").exists()
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] == 4


def test_a_full_disk_ends_with_a_message(synthetic_root, tmp_path, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch("common.checkpoint.torch.save", full):
        assert train.main(args_for(synthetic_root, tmp_path, max_steps=2, val_every=0)) == 2
    err = error_of(capsys)
    assert "No space left on device" in err and "could not be saved" in err


# ------------------------------------------------------------------------------------------------ locks

def test_a_running_run_cannot_be_resumed_or_overwritten(synthetic_root, finished_run, tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    run_dir = copy_run(finished_run, out / "diffusion_synthetic")
    before = snapshot(run_dir)
    held = RunLock(run_dir).acquire()
    try:
        assert train.main(["--resume", str(run_dir), "--max_steps", "4"]) == 2
        assert f"in use by process {os.getpid()}" in error_of(capsys)
        assert train.main(args_for(synthetic_root, out) + ["--overwrite"]) == 2
        assert "in use by process" in error_of(capsys)
    finally:
        held.release()
    after = snapshot(run_dir)
    after.pop(".lock", None), before.pop(".lock", None)
    assert after == before


def test_a_stale_lock_is_said_and_taken_over(finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path / "run")
    (run_dir / ".lock").write_text("process 999999 on a-node\n")
    assert train.main(["--resume", str(run_dir), "--max_steps", "4"]) == 0
    assert "process 999999 on a-node, which is no longer running" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- security

@pytest.mark.parametrize("name", ["train_log.csv", "config.yaml", "tensorboard"])
def test_resume_refuses_links_planted_in_the_run_folder(name, finished_run, tmp_path, capsys):
    run_dir = copy_run(finished_run, tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("must stay")
    target = run_dir / name
    subprocess.run(["rm", "-rf", str(target)], check=True)
    target.symlink_to(victim)
    assert train.main(["--resume", str(run_dir), "--max_steps", "4"]) == 2
    assert "symbolic link" in error_of(capsys)
    assert victim.read_text() == "must stay"


def test_a_crafted_model_config_is_refused_before_anything_is_built(finished_run, tmp_path, capsys):
    state = torch.load(finished_run / "last.pt", weights_only=True)
    state["model_config"]["unet"]["dim"] = 1 << 20
    save_checkpoint(state, tmp_path / "huge.pt")
    argv = ["--ckpt", str(tmp_path / "huge.pt"), "--out_dir", str(tmp_path / "out"), "--device", "cpu"]
    assert inference.main(argv) == 2  # built for real, its first layer alone would need terabytes
    assert "weights do not fit the stored model_config" in error_of(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, words", [
    ("model_type", "unknown model type 'mystery'"),
    ("config_key", "does not know: future_option"),
])
def test_checkpoints_from_other_versions_are_named(change, words, finished_run, tmp_path, capsys):
    state = torch.load(finished_run / "last.pt", weights_only=True)
    if change == "model_type":
        state["model_type"] = "mystery"
    else:
        state["config"]["future_option"] = 3
    save_checkpoint(state, tmp_path / "other.pt")
    assert inference.main(["--ckpt", str(tmp_path / "other.pt"), "--out_dir", str(tmp_path / "out")]) == 2
    err = error_of(capsys)
    assert words in err and "format version 2" in err


class Payload:
    def __reduce__(self):
        return (os.system, ("echo unsafe",))


def test_a_malicious_pickle_is_refused_without_advice_to_load_it_unsafely(tmp_path, capsys):
    torch.save({"model_type": "diffusion", "model": Payload()}, tmp_path / "evil.pt")
    assert inference.main(["--ckpt", str(tmp_path / "evil.pt"), "--out_dir", str(tmp_path / "out")]) == 2
    err = error_of(capsys)
    assert "does not load them" in err and "weights_only" not in err


# ---------------------------------------------------------------------------------------- writability

@pytest.mark.parametrize("kind, words", [
    ("file", "is a file; expected a folder"),
    ("dangling", "dangling symbolic link"),
    ("read_only", "is not writable"),
])
def test_output_folders_are_checked_before_work_starts(kind, words, synthetic_root, finished_run, tmp_path, capsys):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("a file")
    elif kind == "dangling":
        out.symlink_to(tmp_path / "gone")
    with mock.patch("common.files.os.access", return_value=kind != "read_only"):
        assert train.main(args_for(synthetic_root, out)) == 2
        assert words in error_of(capsys)
        assert inference.main(["--ckpt", str(finished_run / "last.pt"), "--out_dir", str(out / "samples")
                               if kind == "file" else str(out)]) == 2
        assert error_of(capsys).startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] if kind != "read_only" else not out.exists()


def test_two_trainings_started_together_into_one_folder_one_is_refused(synthetic_root, tmp_path):
    argv = args_for(synthetic_root, tmp_path, max_steps=3, val_every=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by" in refused or "already exists" in refused or "created by another run" in refused
    rows = (tmp_path / "diffusion_synthetic" / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["step", "1", "2", "3"]


@pytest.mark.parametrize("content", ["checkpoint", "list", "tensor"])
def test_pretrained_weights_that_are_no_state_dict(content, synthetic_root, finished_run, tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    if content == "checkpoint":
        weights.write_bytes((finished_run / "last.pt").read_bytes())
    else:
        torch.save([torch.zeros(2)] if content == "list" else torch.zeros(2), weights)
    argv = tiny_config(synthetic_root, tmp_path / "runs", model_type="resnet18", tile_size=32,
                       pretrained_weights=str(weights))
    assert train.main(argv) == 2
    err = error_of(capsys)
    assert f"--pretrained_weights {weights}" in err and "expected a state dict" in err
    assert not (tmp_path / "runs").exists()
