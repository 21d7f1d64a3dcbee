"""Folders generated in one go from a set of parameters: built beside the target, renamed into place, reused.

A generated folder records its parameters in a JSON file written last, so a folder holding that record is
complete. Asking again for the same parameters reuses it; a folder with other parameters or unrelated files
is refused with a DataError naming it, never overwritten.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from data.annotations import DataError


@dataclass(frozen=True)
class CachedFolder:
    """The folder `root` made from `params`, which it records in its file `record_name`.

    `what` names the contents in messages ("synthetic dataset") and `option` how to choose another folder
    ("--root"); `required` lists the files (relative to `root`) of a complete folder; `results` names the
    record entries the build adds beside the parameters (left out when records are compared).
    """

    root: Path
    params: Mapping[str, Any]
    record_name: str
    what: str
    option: str
    required: Sequence[str] = ()
    results: Sequence[str] = ()

    def matches(self) -> bool:
        """True if `root` holds a complete folder made with `params`, False if it is absent or empty.

        DataError naming `root` when it is a file, holds unrelated files, or was made with other parameters.
        """
        root = self.root
        if not root.exists():
            return False
        if not root.is_dir():
            raise DataError(f"{root}: expected a folder for the {self.what}, found a file")
        record = root / self.record_name
        if not record.is_file():
            if any(root.iterdir()):
                raise DataError(f"{root}: folder is not empty and holds no {self.what} (no {self.record_name})")
            return False
        try:
            found = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DataError(f"{record}: unreadable parameter record ({error}); remove the folder {root}") from None
        if not isinstance(found, dict):
            raise DataError(f"{record}: expected a JSON object of parameters; remove the folder {root}")
        found = {key: value for key, value in found.items() if key not in self.results}
        wanted = json.loads(json.dumps(dict(self.params)))
        if found != wanted:
            changed = sorted(key for key in set(wanted) | set(found) if found.get(key) != wanted.get(key))
            raise DataError(
                f"{root}: holds a {self.what} made with other parameters (differing: {', '.join(changed)}); "
                f"remove the folder or choose another {self.option}"
            )
        missing = [name for name in self.required if not (root / name).is_file()]
        if missing:
            listed = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise DataError(f"{root}: {self.what} is incomplete (missing {listed}); remove the folder and regenerate")
        return True

    def build(self, write: Callable[[Path], Mapping[str, Any] | None]) -> Path:
        """Run `write` on an empty folder beside `root`, add the record, and rename the folder to `root`.

        `write` fills the folder and returns the `results` entries of the record (or None). When the rename
        fails because another process has just made the same folder, that folder is kept. Unlike
        `common.files.staged_folder`, an existing `root` is never deleted: only an empty one is replaced.
        """
        root = self.root
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
        try:
            folder = staging / "contents"
            folder.mkdir()
            record = {**self.params, **(write(folder) or {})}
            (folder / self.record_name).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            if root.exists():
                root.rmdir()
            os.replace(folder, root)
        except OSError:
            if not self.matches():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return root

    def reuse_or_build(self, write: Callable[[Path], Mapping[str, Any] | None]) -> Path:
        """`root` as it is when it matches, otherwise built with `write` (see `build`)."""
        return self.root if self.matches() else self.build(write)


def generate_once(
    root: str | Path,
    config: Any,
    build: Callable[[Path, Any, bool], Mapping[str, Any] | None],
    progress: bool,
    *,
    version: int,
    record_name: str,
    what: str,
    option: str,
    required: Sequence[str | Path],
) -> Path:
    """Generate the demo-data folder of the dataclass `config` (which has validate()) into `root` with
    build(folder, config, progress), atomically; reuse it when it is already there with the same parameters."""
    config.validate()
    folder = CachedFolder(root=Path(root), params={"format": version, **asdict(config)}, record_name=record_name,
                          what=what, option=option, required=[str(p) for p in required])
    return folder.reuse_or_build(lambda staging: build(staging, config, progress))
