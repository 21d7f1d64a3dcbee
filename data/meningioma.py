"""Read the meningioma mitosis point files: one file per slide, the slide name being the file stem.

`.txt` files hold `x<TAB>y` rows, all mitotic figures. Other files hold comma-joined lines with the
score word (NOT / INDET / MITE) at field -2 and the position `"x y"` at field 3. A first line without any digit
is a header and skipped; every other line must hold two finite numbers.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from data.annotations import Annotation, DataError

POINT_SUFFIXES = (".txt", ".csv", ".tsv")
INDETERMINATE_MODES = ("negative", "mitotic", "skip")
SCORES = {
    "MITE": ("mitotic figure", 1, 1.0),
    "NOT": ("not mitotic figure", 0, 0.0),
    "INDET": ("indeterminate", 0, 0.5),
}


def _files(folder_or_files: str | Path | Sequence[str | Path]) -> list[Path]:
    """The point files named, or found (by suffix) in the folders named."""
    items = [folder_or_files] if isinstance(folder_or_files, (str, Path)) else list(folder_or_files)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir()
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in POINT_SUFFIXES
            )
            if not found:
                raise DataError(f"{p}: no meningioma point files ({', '.join(POINT_SUFFIXES)}) in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: meningioma point file or folder not found")
    if not files:
        raise DataError("folder_or_files: expected at least one meningioma point file or folder")
    return files


def _xy(text: str) -> tuple[float, float] | None:
    """Two numbers separated by whitespace (quotes allowed around them), or None."""
    parts = text.strip().strip("\"'").split()
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def _parse_txt(line: str) -> tuple[float, float, str] | None:
    xy = _xy(line)
    return None if xy is None else (xy[0], xy[1], "MITE")


def _parse_scored(line: str) -> tuple[float, float, str] | None:
    fields = line.split(",")
    if len(fields) < 6:
        return None
    xy = _xy(fields[3])
    if xy is None:
        return None
    return xy[0], xy[1], fields[-2].strip().strip("\"'").upper()


def _read_file(path: Path, indeterminate: str) -> list[Annotation]:
    parse = _parse_txt if path.suffix.lower() == ".txt" else _parse_scored
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable meningioma point file ({exc})") from exc
    out = []
    seen_content = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = parse(line)
        is_header = not seen_content and not any(ch.isdigit() for ch in line)
        seen_content = True
        if parsed is None:
            if is_header:
                continue
            expected = "'x<TAB>y'" if parse is _parse_txt else "comma-joined fields with '\"x y\"' at field 3"
            raise DataError(f"{path}: line {number}: expected {expected}, got {line!r}")
        if not (math.isfinite(parsed[0]) and math.isfinite(parsed[1])):
            raise DataError(f"{path}: line {number}: expected finite coordinates x y, got {line!r}")
        x, y, score = parsed
        if score not in SCORES:
            raise DataError(f"{path}: line {number}: expected a score word among {sorted(SCORES)}, got {score!r}")
        class_name, label, soft = SCORES[score]
        if score == "INDET":
            if indeterminate == "skip":
                continue
            label = 1 if indeterminate == "mitotic" else 0
        out.append(Annotation(
            slide=path.stem, x=x, y=y, class_name=class_name, label=label, soft=soft,
            uid=f"{path.name}:{number}", kind="spot",
        ))
    return out


def read_meningioma(
    folder_or_files: str | Path | Sequence[str | Path],
    indeterminate: str = "negative",
) -> list[Annotation]:
    """Mitosis points of every file; INDET points get soft 0.5 and the hard label `indeterminate` says."""
    if indeterminate not in INDETERMINATE_MODES:
        raise DataError(f"indeterminate: expected one of {list(INDETERMINATE_MODES)}, got {indeterminate!r}")
    out = []
    for path in _files(folder_or_files):
        out.extend(_read_file(path, indeterminate))
    if not out:
        raise DataError(f"{folder_or_files}: no meningioma points found")
    return out
