"""One line at the end of a demo: is a measured number where the README says it should be on the demo data?

python scripts/verdict.py FILE KEY --at_least X --what "..."   (FILE: a CSV, first row, or a JSON mapping)
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import Parser  # noqa: E402
from common.options import number  # noqa: E402


def read_value(path: Path, key: str) -> float:
    """The number under `key` in a JSON mapping or the first row of a CSV."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
    else:
        with path.open(newline="") as fh:
            data = next(csv.DictReader(fh), {})
    if key not in data:
        raise KeyError(f"{path} has no {key!r}")
    return float(data[key])


def main(argv: list[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("file")
    p.add_argument("key")
    p.add_argument("--at_least", type=number(float), required=True, help="the value the demo should reach")
    p.add_argument("--what", required=True, help="what the number is, for the line printed")
    args = p.parse_args(argv)
    try:
        value = read_value(Path(args.file), args.key)
    except (OSError, KeyError, ValueError, StopIteration) as err:
        print(f"verdict: could not read the result ({err}); the demo did not finish as intended")
        return 1
    if math.isfinite(value) and value >= args.at_least:
        print(f"verdict: working as intended: {args.what} {value:.3f} (the demo should reach {args.at_least:g})")
        return 0
    print(f"verdict: NOT as intended: {args.what} {value:.3f}, expected at least {args.at_least:g} on the demo data; "
          "see the README's expectations")
    return 1


if __name__ == "__main__":
    sys.exit(main())
