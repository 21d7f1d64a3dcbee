"""Semantic diffusion (SDM): a UNet whose decoder follows a nuclei layout through SPADE, and layout-to-image synthesis."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import ConfigError
from common.files import staged_folder
from common.options import Option, flag_bool, number
from data.condition_maps import COLOUR_MAPS, HV_CONVENTIONS, MapOptions, map_channels, map_settings, upgrade_map_settings
from data.families import LAYOUT_DATASETS
from data.monuseg import MATCH_POOL, LayoutPatches, match_struct_partners, shape_statistics, shuffle_partners
from recipes.base import InferenceFlag, LoadedModel, RenderContext
from recipes.diffusion_base import DIFFUSION_OPTIONS, DiffusionRecipe, diffusion_settings, unet_config
from recipes.render import make_recorder, sampling_choice, save_trajectory
from recipes.synthesis import GRID_SAMPLES, MASK_ORDERS, SynthesisJob, synthesise

MATCH_POOL_OTHERS = MATCH_POOL - 1
SDM_OPTIONS = (
    Option("spade_hidden", number(int, 1), 128, "hidden channels of each SPADE block's convolutions", None, "sdm"),
    Option("class_maps", flag_bool, True, "one-hot class maps (--num_classes channels) in the condition; the original SDM condition has none", None, "sdm"),
    Option("hv_convention", str, "hovernet", "--use_hv_map centre: hovernet (HoVer-Net's targets: rounded centre of mass, 1-based pixel grid) or centroid (exact centroid)", HV_CONVENTIONS, "sdm"),
    Option("colour_map", str, "nucleus_mean", "--use_col_map content: nucleus_mean (each nucleus its mean colour) or pixel_shuffle (the tile's pixels at random positions, the original SDM's)", COLOUR_MAPS, "sdm"),
    Option("preserve_nuclei_col", flag_bool, False, "pixel_shuffle colour map: shuffle nucleus and background pixels separately", None, "sdm"),
)
SYNTHESIS_FLAGS = (
    InferenceFlag(("--num_samples",), dict(type=number(int, 1), help="tiles per checkpoint and guidance scale (default 16)")),
    InferenceFlag(("--masks",), dict(help="tiled layout folder (images/, inst_masks/) to take layouts from (default: the checkpoint's training tiles)")),
    InferenceFlag(("--layout_order",), dict(choices=MASK_ORDERS, help="which layouts the samples use: random draws (default), shuffle (every layout once in a seeded random order before repeating) or in_order")),
    InferenceFlag(("--shuffle_masks",), dict(action="store_true", help="colour map of each layout from the image of a random other tile (the original SDM's flag)")),
    InferenceFlag(("--match_struct",), dict(action="store_true", help=f"colour map of each layout from a random one of the {MATCH_POOL_OTHERS} tiles most similar in nuclei areas (the original SDM's flag)")),
    InferenceFlag(("--preserve_nuclei_col",), dict(action=argparse.BooleanOptionalAction, help="pixel_shuffle colour maps: keep nucleus and background pixels apart (default: as the checkpoint was trained)")),
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
        check_map_options(config)

    def upgrade(self, model_config: dict[str, Any]) -> dict[str, Any]:
        upgraded = super().upgrade(model_config)
        return {**upgraded, "maps": upgrade_map_settings(upgraded["maps"])}

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


def check_map_options(config: dict[str, Any]) -> None:
    """ConfigError for condition-map options that would do nothing or leave no map."""
    if config["hv_convention"] != "hovernet" and not config["use_hv_map"]:
        raise ConfigError(f"--hv_convention {config['hv_convention']} shapes the hv maps: add --use_hv_map")
    if config["colour_map"] != "nucleus_mean" and not config["use_col_map"]:
        raise ConfigError(f"--colour_map {config['colour_map']} shapes the colour map: add --use_col_map")
    if config["preserve_nuclei_col"] and (config["colour_map"] != "pixel_shuffle" or not config["use_col_map"]):
        raise ConfigError("--preserve_nuclei_col shuffles the pixels of the colour map: it needs --use_col_map --colour_map pixel_shuffle")
    if not config["class_maps"] and config["num_classes"] != 2:
        raise ConfigError(f"--num_classes {config['num_classes']} counts the one-hot class maps, which --no-class_maps leaves out")
    if not (config["class_maps"] or not config["no_instance"] or config["use_hv_map"] or config["use_col_map"]):
        raise ConfigError("--no-class_maps with --no_instance and no --use_hv_map / --use_col_map leaves the layout no condition map")


def appearance_partners(layouts: LayoutPatches, args: argparse.Namespace) -> list[int] | None:
    """Which tile's image gives each layout its colour map: --match_struct, --shuffle_masks, or its own (None)."""
    if args.shuffle_masks and args.match_struct:
        raise ConfigError("--shuffle_masks and --match_struct both choose where colour maps come from: give one")
    if not (args.shuffle_masks or args.match_struct):
        return None
    flag = "--match_struct" if args.match_struct else "--shuffle_masks"
    if not layouts.maps.colour:
        raise ConfigError(f"{flag} takes each layout's colour map from another tile; this checkpoint has no colour map "
                          "(trained without --use_col_map). For the order of layouts use --layout_order")
    rng = np.random.default_rng(args.seed)
    if args.shuffle_masks:
        return shuffle_partners(len(layouts), rng)
    statistics = np.stack([shape_statistics(layouts.read_mask(name)) for name in layouts.names])
    return match_struct_partners(statistics, rng)


def synthesis_layouts(layouts: LayoutPatches, args: argparse.Namespace) -> LayoutPatches:
    """The layouts as inference flags ask: --preserve_nuclei_col, colour maps from partner tiles, --seed."""
    layouts.seed = args.seed
    if args.preserve_nuclei_col is not None:
        if layouts.maps.colour_map != "pixel_shuffle" or not layouts.maps.colour:
            raise ConfigError("--preserve_nuclei_col is for checkpoints with a pixel_shuffle colour map; this one has "
                              + (f"a {layouts.maps.colour_map} one" if layouts.maps.colour else "none"))
        layouts.maps = replace(layouts.maps, preserve_nuclei_col=args.preserve_nuclei_col)
    partners = appearance_partners(layouts, args)
    return layouts if partners is None else layouts.with_appearance(partners, args.seed)


def render_synthesis(ctx: RenderContext) -> None:
    """H&E tiles from layouts, for every checkpoint x guidance scale, written as a segmentation training set."""
    args, first, device = ctx.args, ctx.first, ctx.device
    num_samples = args.num_samples if args.num_samples is not None else 16
    spec = sampling_choice(args, checkpoints=ctx.checkpoints)
    for other in ctx.checkpoints[1:]:
        if other.model_type != first.model_type or other.model_config["maps"] != first.model_config["maps"]:
            raise ConfigError(f"--ckpt {other.path}: not an sdm checkpoint with the same condition maps as {first.path}")
    layouts = synthesis_layouts(ctx.data.layouts(first.config, first.model_config, args.masks), args)
    jobs = [SynthesisJob(m.model, m.diffusion, f"m{i}") for i, m in enumerate(ctx.checkpoints)]
    order = args.layout_order or "random"
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
    shown = min(num_samples, GRID_SAMPLES)
    print(f"pictures: {out / 'grid.png'} (first {shown} samples: layout | generated per checkpoint and guidance scale | real); "
          f"list: {out / 'samples.csv'}")
