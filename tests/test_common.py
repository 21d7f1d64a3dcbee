"""common/: the error hierarchy, the CLI wrapper and the atomic file helpers."""
from __future__ import annotations

import csv
import locale
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import files
from common.cli import run_main
from common.errors import CheckpointError, ConfigError, DataError, TrainingError, UserError
from common.files import (
    MARKER,
    atomic_path,
    mark_as_ours,
    read_csv_rows,
    save_figure_atomic,
    save_image_atomic,
    staged_folder,
    write_csv_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------------------ errors, CLI

def test_user_errors_are_also_the_builtin_errors_callers_catch():
    for cls in (ConfigError, DataError, CheckpointError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)
    assert issubclass(TrainingError, UserError) and issubclass(TrainingError, RuntimeError)


def test_run_main_exit_codes_and_messages(capsys):
    calls = []

    def run(argv):
        calls.append(argv)
        if argv == ["config"]:
            raise ConfigError("--flag: expected a number")
        if argv == ["missing"]:
            raise FileNotFoundError("no such file: x.csv")
        if argv == ["stop"]:
            raise KeyboardInterrupt

    assert run_main(run, ["ok"]) == 0
    assert run_main(run, ["config"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --flag: expected a number\n"
    assert run_main(run, ["missing"]) == 2
    assert capsys.readouterr().err == "error: no such file: x.csv\n"
    assert run_main(run, ["stop"]) == 130
    assert calls == [["ok"], ["config"], ["missing"], ["stop"]]


def test_run_main_cleans_up_and_lets_programming_errors_through():
    cleaned = []

    def broken(argv):
        raise ValueError("a bug, not a user error")

    with pytest.raises(ValueError, match="a bug"):
        run_main(broken, [], cleanup=lambda: cleaned.append("after bug"))
    assert run_main(lambda argv: None, [], cleanup=lambda: cleaned.append("after success")) == 0
    assert cleaned == ["after bug", "after success"]


# ------------------------------------------------------------------------------------------------ atomic files

def test_atomic_write_replaces_the_file_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "out" / "result.json"
    write_text_atomic(target, "first\n")
    write_text_atomic(target, "second\n")
    assert target.read_text() == "second\n"
    assert leftovers(target.parent, {"result.json"}) == []


def test_atomic_write_keeps_the_old_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "result.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert leftovers(tmp_path, {"result.csv"}) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.csv") as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert leftovers(tmp_path, {"result.csv"}) == []


def test_atomic_write_permissions_follow_the_umask(tmp_path, umask_027):
    target = tmp_path / "result.txt"
    write_text_atomic(target, "x")
    assert mode(target) == 0o666 & ~umask_027
    assert files._umask() == umask_027


def test_atomic_path_keeps_the_suffix_for_format_by_extension(tmp_path):
    with atomic_path(tmp_path / "picture.png", suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".picture.png.")


def test_write_csv_atomic_takes_dict_and_sequence_rows(tmp_path):
    target = tmp_path / "rows.csv"
    write_csv_atomic(target, ["a", "b"], [{"a": 1, "b": 0.5, "extra": "ignored"}, {"a": 2}, [3, "x"]])
    with target.open(newline="") as fh:
        assert list(csv.reader(fh)) == [["a", "b"], ["1", "0.5"], ["2", ""], ["3", "x"]]


def test_save_image_and_figure_atomic(tmp_path):
    image = Image.fromarray(np.full((4, 5, 3), 200, np.uint8))
    save_image_atomic(image, tmp_path / "image.png")
    assert Image.open(tmp_path / "image.png").size == (5, 4)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(1, 1))
    figure.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    save_figure_atomic(figure, tmp_path / "plot.png", dpi=20)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leftovers(tmp_path, {"image.png", "plot.png"}) == []


# ------------------------------------------------------------------------------------------------ staged folders

def test_staged_folder_moves_a_complete_folder_into_place(tmp_path, umask_027):
    out = tmp_path / "samples"
    out.mkdir()
    mark_as_ours(out, "a test")
    (out / "old.png").write_text("old")
    staged_folder(out, lambda folder: (folder / "new.png").write_text("new"))
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "new.png"])
    assert mode(out) == 0o777 & ~umask_027
    assert leftovers(tmp_path, {"samples"}) == []


def test_staged_folder_keeps_the_old_folder_when_writing_fails(tmp_path):
    out = tmp_path / "samples"
    out.mkdir()
    mark_as_ours(out, "a test")
    (out / "old.png").write_text("old")

    def write(folder: Path) -> None:
        (folder / "new.png").write_text("new")
        raise DataError("bad input halfway")

    with pytest.raises(DataError, match="halfway"):
        staged_folder(out, write)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "old.png"])
    assert leftovers(tmp_path, {"samples"}) == []


def test_staged_folder_never_replaces_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    with pytest.raises(ConfigError, match="not written by this toolkit"):
        staged_folder(out, lambda folder: (folder / "new.png").write_text("new"))
    assert sorted(p.name for p in out.iterdir()) == ["thesis.docx"]
    assert leftovers(tmp_path, {"results"}) == []


def test_staged_folder_never_replaces_a_file(tmp_path):
    out = tmp_path / "samples"
    out.write_text("someone else's file")
    with pytest.raises(DataError, match="expected a folder"):
        staged_folder(out, lambda folder: None)
    assert out.read_text() == "someone else's file"
    assert leftovers(tmp_path, {"samples"}) == []


# ------------------------------------------------------------------------------------------------ CSV reading

def test_read_csv_rows_names_the_file_and_the_missing_columns(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("slide,split\na,train\nb,val\n")
    assert read_csv_rows(path, ("slide", "split"), "--split_file") == [
        {"slide": "a", "split": "train"}, {"slide": "b", "split": "val"}]
    bad = tmp_path / "bad.csv"
    bad.write_text("slide,set\na,train\n")
    with pytest.raises(DataError) as err:
        read_csv_rows(bad, ("slide", "split", "weight"), "--split_file")
    assert str(err.value) == f"--split_file {bad}: expected columns slide,split,weight (missing split,weight)"
    with pytest.raises(DataError, match=f"--split_file {tmp_path / 'none.csv'} does not exist"):
        read_csv_rows(tmp_path / "none.csv", ("slide",), "--split_file")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"missing slide\)"):
        read_csv_rows(empty, ("slide",), "--split_file")
    if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
        binary = tmp_path / "binary.csv"
        binary.write_bytes(b"\xff\xfe\x00slide\n")
        with pytest.raises(DataError, match="cannot be read"):
            read_csv_rows(binary, ("slide",), "--split_file")
