"""Patches/s of the WSI sampler with worker processes and threads, on the synthetic slides and a real slide.

python benchmarks/bench_wsi.py --patches 2000 --workers 0,2 --threads 1,4 [--slide PATH]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.cli import Parser, run_main  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.options import int_list  # noqa: E402
from data.annotations import Annotation, ClassMap  # noqa: E402
from data.sliderunner import read_sliderunner  # noqa: E402
from data.synthetic import generate_synthetic_dataset, synthetic_paths  # noqa: E402
from data.wsi import PatchOptions, StreamSampler, WSITrainPatches, resolve_slides  # noqa: E402

CMU = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def synthetic_set(root: Path, tile: int, batch: int) -> WSITrainPatches:
    generate_synthetic_dataset(root, progress=False)
    anns = read_sliderunner(synthetic_paths(root)["database"], ClassMap(("Mitotic figure",), ("Mitotic figure lookalike",)))
    return WSITrainPatches(anns, resolve_slides(anns, synthetic_paths(root)["slides_dir"]), PatchOptions(tile, max_offset=8), batch, 0.5)


def slide_dimensions(path: Path) -> tuple[int, int]:
    """Level-0 width and height of the slide at `path`; a file OpenSlide cannot read is a UserError naming --slide."""
    try:
        with openslide.OpenSlide(str(path)) as slide:
            return slide.dimensions
    except openslide.OpenSlideError as err:
        raise UserError(f"--slide {path}: expected a whole-slide image that OpenSlide can read ({err})") from None


def real_set(path: Path, tile: int, batch: int) -> WSITrainPatches:
    """Random spots on a real slide, half of them called mitotic (reading speed only)."""
    w, h = slide_dimensions(path)
    rng = np.random.default_rng(0)
    anns = [Annotation(path.name, float(x), float(y), "spot", i % 2, float(i % 2), str(i))
            for i, (x, y) in enumerate(zip(rng.uniform(0, w, 500), rng.uniform(0, h, 500)))]
    return WSITrainPatches(anns, {path.name: path}, PatchOptions(tile, max_offset=8), batch, 0.5)


def with_workers(dataset: WSITrainPatches, batch: int, workers: int, patches: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, sampler=StreamSampler(batch), num_workers=workers)
    it = iter(loader)
    next(it)
    tic = time.perf_counter()
    for _ in range(patches // batch):
        next(it)
    return patches // batch * batch / (time.perf_counter() - tic)


def with_threads(dataset: WSITrainPatches, threads: int, patches: int) -> float:
    dataset[0]
    with ThreadPoolExecutor(threads) as pool:
        tic = time.perf_counter()
        for _ in pool.map(dataset.__getitem__, range(patches)):
            pass
    return patches / (time.perf_counter() - tic)


def run(argv: Sequence[str] | None = None) -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, default=2000)
    p.add_argument("--tile_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--workers", type=int_list, default=[0, 2])
    p.add_argument("--threads", type=int_list, default=[1, 4])
    p.add_argument("--synthetic_root", default=str(Path(tempfile.gettempdir()) / "pathodiff_bench_synthetic"))
    p.add_argument("--slide", type=Path, help="a real whole-slide image to read as well (default: "
                   "../shared/data/slides/CMU-1-Small-Region.svs where it exists)")
    args = p.parse_args(argv)

    slide = args.slide if args.slide is not None else (CMU if CMU.is_file() else None)
    real = real_set(slide, args.tile_size, args.batch_size) if slide is not None else None
    sets = {"synthetic": synthetic_set(Path(args.synthetic_root), args.tile_size, args.batch_size)}
    if real is not None:
        sets["real_slide"] = real
    results = []
    for name, dataset in sets.items():
        for w in args.workers:
            results.append({"slides": name, "workers": w, "patches_per_s": round(with_workers(dataset, args.batch_size, w, args.patches), 1)})
        for t in args.threads:
            results.append({"slides": name, "threads": t, "patches_per_s": round(with_threads(dataset, t, args.patches), 1)})
    print(json.dumps({"benchmark": "wsi_patches", "tile_size": args.tile_size, "cpu_count": os.cpu_count(),
                      "real_slide": str(slide) if slide is not None else None, "results": results}))


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run_main(run, argv))


if __name__ == "__main__":
    main()
