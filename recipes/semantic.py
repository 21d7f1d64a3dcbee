"""Semantic diffusion (SDM): a UNet whose decoder follows a nuclei layout through SPADE, and layout-to-image synthesis."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import ConfigError
from common.files import staged_folder
from common.options import Option
from data.condition_maps import MapOptions, map_channels, map_settings
from data.families import LAYOUT_DATASETS
from recipes.base import InferenceFlag, LoadedModel, RenderContext
from recipes.diffusion_base import DIFFUSION_OPTIONS, DiffusionRecipe, diffusion_settings, unet_config
from recipes.render import make_recorder, sampling_choice, save_trajectory
from recipes.synthesis import SynthesisJob, synthesise

SDM_OPTIONS = (
    Option("spade_hidden", int, 128, "hidden channels of each SPADE block's convolutions", None, "sdm"),
)
SYNTHESIS_FLAGS = (
    InferenceFlag(("--num_samples",), dict(type=int, help="tiles per checkpoint and guidance scale (default 16)")),
    InferenceFlag(("--masks",), dict(help="tiled layout folder (images/, inst_masks/) to take layouts from (default: the checkpoint's training tiles)")),
    InferenceFlag(("--shuffle_masks",), dict(action="store_true", help="use every layout once in a seeded random order before repeating")),
    InferenceFlag(("--match_struct",), dict(action="store_true", help="use the layouts in order, so the set mirrors the real one")),
)



class SemanticDiffusion(DiffusionRecipe):
    summary = "SPADE UNet conditioned on nuclei layouts (SDM), learned variance; layout-to-image synthesis"
    demo_preset = "configs/demo_sdm.yaml"
    option_groups = ("layout data", "clusters", "diffusion", "sdm")
    options = DIFFUSION_OPTIONS + SDM_OPTIONS
    datasets = LAYOUT_DATASETS
    default_learn_sigma = True
    default_cond_drop_prob = 0.2
    default_resblock_updown = True

    def finalise(self, config: dict[str, Any]) -> None:
        super().finalise(config)
        if config["cluster_file"] and config["cluster_id"] is None:
            raise ConfigError("--cluster_file for sdm needs --cluster_id (the cluster to train on)")

    def model_config(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        maps = map_settings(config)
        unet = unet_config(config, config["tile_size"], 3, ["semantic"],
                           semantic_channels=map_channels(MapOptions(**maps)), spade_hidden=config["spade_hidden"])
        return {"unet": unet, "diffusion": diffusion_settings(config), "maps": maps}

    def conditions(self, config: dict[str, Any]) -> list[str]:
        return ["semantic"]

    def inference_flags(self, loaded: LoadedModel) -> tuple[InferenceFlag, ...]:
        return SYNTHESIS_FLAGS

    def all_inference_flags(self) -> tuple[InferenceFlag, ...]:
        return SYNTHESIS_FLAGS

    def render(self, ctx: RenderContext) -> None:
        render_synthesis(ctx)


def render_synthesis(ctx: RenderContext) -> None:
    """H&E tiles from layouts, for every checkpoint x guidance scale, written as a segmentation training set."""
    args, first, device = ctx.args, ctx.first, ctx.device
    if args.shuffle_masks and args.match_struct:
        raise ConfigError("--shuffle_masks and --match_struct contradict each other: give one")
    num_samples = args.num_samples if args.num_samples is not None else 16
    if num_samples < 1:
        raise ConfigError(f"--num_samples must be at least 1, got {num_samples}")
    spec = sampling_choice(args)
    for other in ctx.checkpoints[1:]:
        if other.model_type != first.model_type or other.model_config["maps"] != first.model_config["maps"]:
            raise ConfigError(f"--ckpt {other.path}: not an sdm checkpoint with the same condition maps as {first.path}")
    layouts = ctx.data.layouts(first.config, first.model_config, args.masks)
    jobs = [SynthesisJob(m.model, m.diffusion, f"m{i}") for i, m in enumerate(ctx.checkpoints)]
    order = "shuffle" if args.shuffle_masks else "in_order" if args.match_struct else "random"
    scales = args.cfg_scale or [1.5]
    out = Path(args.out_dir)
    count: dict[str, int] = {}
    recorder = make_recorder(args)

    def write(folder: Path) -> None:
        count.update(n=synthesise(jobs, layouts, scales, num_samples, args.batch_size, order, spec, args.seed, device, folder,
                                  callback=recorder))
        save_trajectory(recorder, folder)

    staged_folder(out, write)
    print(f"{count['n']} tiles from {len(ctx.checkpoints)} checkpoint(s) x guidance {scales} into {out}: images/, labels/, inst_masks/, cond/")
    print(f"pictures: {out / 'grid.png'} (layout | generated | real); list: {out / 'samples.csv'}")
