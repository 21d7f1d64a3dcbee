"""Compare segmentation runs scored on the same test tiles: one table row per run, a CSV and a bar plot.

Each run is `NAME=DIR`, DIR being the output folder of `inference.py --ckpt SEG_CKPT --test_dir TEST` (its
`test_metrics.json`). Columns: IoU and Dice over the pooled pixels (foreground classes), the mean and population
variance over slides of each slide's IoU, and the number of tiles and slides scored.

python -m tools.compare_segmentation --runs real=runs/demo/seg_real_test syn=runs/demo/seg_syn_test --out runs/demo/table.csv
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.cli import Parser, run_main  # noqa: E402
from common.errors import ConfigError, DataError  # noqa: E402
from common.files import check_writable_output, save_figure_atomic, write_csv_atomic  # noqa: E402

COLUMNS = ("run", "iou", "dice", "slide_iou_mean", "slide_iou_var", "tiles", "slides", "test_dir")
NUMBERS = ("iou", "dice", "slide_iou_mean", "slide_iou_var", "tiles", "slides")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, metavar="NAME=DIR", help="scored runs: a name and the folder holding test_metrics.json")
    p.add_argument("--out", required=True, help="CSV to write (the bar plot goes beside it as .png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing CSV and plot")
    return p


def read_run(spec: str) -> dict[str, Any]:
    """One table row from NAME=DIR (DataError when DIR holds no readable test_metrics.json)."""
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise ConfigError(f"--runs {spec!r}: expected NAME=DIR")
    path = Path(folder) / "test_metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: expected the test_metrics.json of a scored segmentation run ({err})") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object (the test_metrics.json of a scored segmentation run)")
    missing = [c for c in COLUMNS[1:] if c not in metrics]
    if missing:
        raise DataError(f"{path}: missing {missing}; score the run with inference.py --test_dir")
    wrong = [c for c in NUMBERS if isinstance(metrics[c], bool) or not isinstance(metrics[c], (int, float))]
    if wrong:
        raise DataError(f"{path}: {wrong} must be numbers, got {[metrics[c] for c in wrong]}")
    return {"run": name, **{c: metrics[c] for c in COLUMNS[1:]}}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """IoU per run (bar) with the per-slide IoU standard deviation as error bar."""
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(rows), 3.2))
    errors = [math.sqrt(r["slide_iou_var"]) if math.isfinite(r["slide_iou_var"]) else 0.0 for r in rows]
    ax.bar([r["run"] for r in rows], [r["slide_iou_mean"] for r in rows], yerr=errors, capsize=4, color="#6a3d9a")
    ax.set_ylabel("per-slide IoU (mean ± sd)")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def run(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    picture = out.with_suffix(".png")
    for path in (out, picture):
        check_writable_output(path, "--out", folder=False)
        if path.exists() and not args.overwrite:
            raise ConfigError(f"{path} exists; pass --overwrite to replace it")
    rows = [read_run(spec) for spec in args.runs]
    if len({r["run"] for r in rows}) != len(rows):
        raise ConfigError("--runs: every run needs its own name")
    if len({r["test_dir"] for r in rows}) != 1:
        raise DataError(f"--runs were scored on different test sets: {sorted({r['test_dir'] for r in rows})}")
    write_csv_atomic(out, COLUMNS, rows)
    plot(rows, picture)
    width = max(len("run"), *(len(r["run"]) for r in rows)) + 2
    print(f"{'run':<{width}}{'IoU':>8}{'Dice':>8}{'slide IoU':>11}{'slide var':>11}{'tiles':>7}{'slides':>7}")
    for r in rows:
        print(f"{r['run']:<{width}}{r['iou']:>8.4f}{r['dice']:>8.4f}{r['slide_iou_mean']:>11.4f}{r['slide_iou_var']:>11.5f}{r['tiles']:>7}{r['slides']:>7}")
    print(f"test set {rows[0]['test_dir']}; table {out}, plot {picture}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
