"""A training run's folder: named safely, created exclusively, locked for the whole run, and free of links.

The lock is an advisory `fcntl.flock` on `.lock` inside the folder; the kernel releases it when the process dies,
so a lock file left by a killed run is "stale": it still names the dead process, which is said and taken over.
"""
from __future__ import annotations

import fcntl
import os
import re
import socket
from pathlib import Path

from common.errors import ConfigError, DataError
from common.files import MARKER, check_replaceable, mark_as_ours, remove_ours

LOCK = ".lock"
NAME_PART = re.compile(r"[A-Za-z0-9._+-]+")


def check_name_part(value: str, flag: str) -> None:
    """ConfigError unless `value` can be part of a folder name: letters, digits, '.', '_', '+', '-', and no '..'."""
    if not NAME_PART.fullmatch(value) or ".." in value:
        raise ConfigError(f"{flag} {value!r}: expected letters, digits, '.', '_', '+' or '-' (no path separators "
                          "and no '..'), since it becomes part of the run folder's name")


def check_inside(run_dir: Path, out_dir: Path, flag: str = "--out_dir") -> None:
    """ConfigError unless the run folder lies strictly inside `out_dir` once both are resolved."""
    root, target = out_dir.resolve(), run_dir.resolve()
    if root not in target.parents:
        raise ConfigError(f"the run folder {run_dir} resolves to {target}, which is not inside {flag} {out_dir}")


def check_no_links(run_dir: Path) -> None:
    """ConfigError when anything inside the run folder is a symbolic link: nothing is written through links."""
    for folder, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink():
                raise ConfigError(f"run folder {run_dir} holds a symbolic link {path} -> {os.readlink(path)}; the "
                                  "toolkit does not write through links: remove the link and start again")


def remove_partial_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files an interrupted atomic save left (`.<name>.<random>.tmp`); give their paths."""
    removed = []
    for path in run_dir.rglob(".*.tmp"):
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


class RunLock:
    """An exclusive lock on a run folder, held until release() (or the process's death)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / LOCK
        self.fd: int | None = None
        self.stale_owner: str | None = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise ConfigError naming the process that holds it."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as err:
            raise DataError(f"run folder {self.run_dir}: cannot open its lock file {self.path} ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(f"run folder {self.run_dir} is in use by {owner}; wait for that run to end, or train "
                              "into another folder") from None
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        self.stale_owner = previous or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file (an empty file is not stale) and let go of the lock."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def check_new_run_dir(run_dir: Path, out_dir: Path, overwrite: bool, keep: list[Path]) -> bool:
    """Whether `run_dir` holds an earlier run that --overwrite may replace; ConfigError when it is a link, lies
    outside `out_dir`, or is taken without --overwrite (or not replaceable)."""
    if run_dir.is_symlink():
        raise ConfigError(f"run folder {run_dir} is a symbolic link; the toolkit creates run folders itself")
    check_inside(run_dir, out_dir)
    if not (run_dir.exists() and any(run_dir.iterdir())):
        return False
    if not overwrite:
        raise ConfigError(f"run folder {run_dir} already exists; pass --overwrite to replace it or --resume "
                          f"{run_dir} to continue")
    check_replaceable(run_dir, "--overwrite: run folder", keep)
    return True


def open_new_run(run_dir: Path, out_dir: Path, overwrite: bool, keep: list[Path], what: str) -> RunLock:
    """Create `run_dir` exclusively (replacing a folder the toolkit wrote when `overwrite`), mark it and lock it."""
    if check_new_run_dir(run_dir, out_dir, overwrite, keep):
        RunLock(run_dir).acquire().release()  # refuses while a run is using it
        remove_ours(run_dir, "--overwrite: run folder", keep)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:
        if any(run_dir.iterdir()):
            raise ConfigError(f"run folder {run_dir} was created by another run just now; choose another folder") from None
    lock = RunLock(run_dir).acquire()
    if not (run_dir / MARKER).exists():
        mark_as_ours(run_dir, what)
    return lock


def open_existing_run(run_dir: Path) -> RunLock:
    """Lock the folder of a run to resume; refuse links inside it and clean up partial files of a killed save."""
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run folder")
    check_no_links(run_dir)
    lock = RunLock(run_dir).acquire()
    for path in remove_partial_files(run_dir):
        print(f"removed {path}, the partial file of an interrupted save", flush=True)
    return lock
