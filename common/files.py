"""Files written whole or not at all: temporary file (or folder) beside the target, then an atomic rename.

Temporary files may be private; what is moved into place gets the permissions the user's umask gives.
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from common.errors import ConfigError, DataError

# The file every output folder this toolkit creates holds; --overwrite replaces only folders that hold it.
MARKER = ".pathodiff-output"


def _umask() -> int:
    """The process umask, read without changing it where the system reports it (os.umask(0) races threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any error it is removed.

    `suffix` keeps the file type visible to writers that choose the format by extension (e.g. ".png").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: str | Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any] | Sequence[Any]]) -> None:
    """A CSV with a header row; rows are dicts keyed by column, or sequences in column order."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns] if isinstance(row, Mapping) else list(row))


def save_image_atomic(image: Any, path: str | Path) -> None:
    """Save a PIL image (or anything with .save(path)) atomically, in the format of path's extension."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        image.save(tmp)


def save_figure_atomic(figure: Any, path: str | Path, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        figure.savefig(tmp, **kwargs)


def staged_folder(out: str | Path, write: Callable[[Path], None], what: str = "this toolkit") -> None:
    """Fill a temporary folder beside `out` with write(folder), mark it as the toolkit's, then move it into place.

    An existing `out` is replaced only when it is empty or holds the toolkit's marker. It is first renamed aside
    and deleted only once the new folder is in place, so a failure at any point leaves either the old folder or
    the new one at `out`, never neither.
    """
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"{out}: expected a folder to replace, found a file or link; it is left as it is")
    if out.is_dir() and any(out.iterdir()) and not is_ours(out):
        raise ConfigError(f"{out} exists and was not written by this toolkit (no {MARKER} file in it); it is left as "
                          "it is: choose another output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(staging)
        mark_as_ours(staging, what)
        os.chmod(staging, 0o777 & ~_umask())
        if not out.exists():
            os.replace(staging, out)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        try:
            os.replace(out, old / out.name)
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(old / out.name, out)
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_csv_rows(path: str | Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV that must exist and have the `required` columns; `what` names the flag in messages."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{what} {path}: expected columns {','.join(required)} (missing {','.join(missing)})")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{what} {path} cannot be read as a CSV file: {err}") from None


def check_writable_output(path: str | Path, what: str, folder: bool = True) -> None:
    """DataError unless `path` can be written as a folder (folder=True) or a file: not a dangling or any other
    symlink to replace, not a file where a folder goes (or the reverse), and its nearest existing parent writable.

    Call it before long work starts, so a run does not fail at its end; `what` names the flag or file in messages.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise DataError(f"{what} {path} is a dangling symbolic link; remove it or choose another path")
    if path.exists():
        if folder and not path.is_dir():
            raise DataError(f"{what} {path} is a file; expected a folder")
        if not folder and path.is_dir():
            raise DataError(f"{what} {path} is a folder; expected a file name")
    probe = path if path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DataError(f"{what} {path}: {probe} is a file, so no folder can be made below it")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(f"{what} {path}: {probe} is not writable (read-only file system or no permission)")


def mark_as_ours(folder: str | Path, what: str) -> None:
    """Write the marker into a folder this toolkit just created (`what` wrote it: "train.py", "inference.py", ...)."""
    write_text_atomic(Path(folder) / MARKER, f"written by {what}; --overwrite may replace this folder\n")


def is_ours(folder: str | Path) -> bool:
    """Whether `folder` is a real folder (not a symlink) that holds this toolkit's marker."""
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and (folder / MARKER).is_file()


def check_replaceable(folder: str | Path, flag: str, keep: Sequence[str | Path] = ()) -> None:
    """ConfigError unless `folder` may be replaced by --overwrite: a folder this toolkit wrote (its marker), not a
    symlink, and not holding (or lying inside) any path in `keep` (e.g. the checkpoints being read)."""
    folder = Path(folder)
    if folder.is_symlink():
        raise ConfigError(f"{flag} {folder} is a symbolic link; --overwrite never replaces a link or its target")
    if not is_ours(folder):
        raise ConfigError(f"{flag} {folder} exists and was not written by this toolkit (no {MARKER} file in it); "
                          "--overwrite replaces only folders the toolkit wrote: choose another folder")
    root = folder.resolve()
    for item in keep:
        target = Path(item).resolve()
        if target == root or root in target.parents or target in root.parents:
            raise ConfigError(f"{flag} {folder} holds {item}, which this run reads; --overwrite would delete it: "
                              "choose another folder")


def remove_ours(folder: str | Path, flag: str, keep: Sequence[str | Path] = ()) -> None:
    """Delete a folder this toolkit wrote (check_replaceable first)."""
    check_replaceable(folder, flag, keep)
    shutil.rmtree(folder)
