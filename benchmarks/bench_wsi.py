"""Patches/s of the WSI sampler with worker processes and threads, on the synthetic slides and the real CMU slide.

python benchmarks/bench_wsi.py --patches 2000 --workers 0,2 --threads 1,4
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.cli import Parser  # noqa: E402
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


def cmu_set(tile: int, batch: int) -> WSITrainPatches:
    """Random spots on the real Aperio slide, half of them called mitotic (reading speed only)."""
    with openslide.OpenSlide(str(CMU)) as slide:
        w, h = slide.dimensions
    rng = np.random.default_rng(0)
    anns = [Annotation(CMU.name, float(x), float(y), "spot", i % 2, float(i % 2), str(i))
            for i, (x, y) in enumerate(zip(rng.uniform(0, w, 500), rng.uniform(0, h, 500)))]
    return WSITrainPatches(anns, {CMU.name: CMU}, PatchOptions(tile, max_offset=8), batch, 0.5)


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


def main() -> None:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, default=2000)
    p.add_argument("--tile_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--workers", type=int_list, default=[0, 2])
    p.add_argument("--threads", type=int_list, default=[1, 4])
    p.add_argument("--synthetic_root", default=str(Path(tempfile.gettempdir()) / "pathodiff_bench_synthetic"))
    args = p.parse_args()

    sets = {"synthetic": synthetic_set(Path(args.synthetic_root), args.tile_size, args.batch_size)}
    if CMU.is_file():
        sets["cmu_svs"] = cmu_set(args.tile_size, args.batch_size)
    results = []
    for name, dataset in sets.items():
        for w in args.workers:
            results.append({"slides": name, "workers": w, "patches_per_s": round(with_workers(dataset, args.batch_size, w, args.patches), 1)})
        for t in args.threads:
            results.append({"slides": name, "threads": t, "patches_per_s": round(with_threads(dataset, t, args.patches), 1)})
    print(json.dumps({"benchmark": "wsi_patches", "tile_size": args.tile_size, "cpu_count": torch.get_num_threads(), "results": results}))


if __name__ == "__main__":
    main()
