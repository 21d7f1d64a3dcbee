"""Pixel-space diffusion conditioned on the mitosis score (or a class label, or nothing), and its transition sequences.

Score-conditioned checkpoints render mitosis transition sequences scored by the classifier ensemble;
label-conditioned or unconditional ones render tiles per class, like latent diffusion.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from common.errors import ConfigError
from common.files import staged_folder
from data.families import PCAM_DATASETS, WSI_DATASETS
from common.options import number
from recipes.base import InferenceFlag, LoadedModel, RenderContext
from recipes.diffusion_base import CONDITION_OPTIONS, DIFFUSION_OPTIONS, DiffusionRecipe, diffusion_settings, unet_config
from recipes.latents import TILE_FLAGS, render_tiles
from recipes.render import make_recorder, one_guidance_scale, sampling_choice, save_trajectory
from recipes.transitions import (
    load_start_images,
    parse_conditions,
    render_sequences,
    score_images,
    write_outputs,
)

TRANSITION_FLAGS = (
    InferenceFlag(("--classifier_ckpts",), dict(nargs="+", help="classifier checkpoints or folders of runs (e.g. model_weights/resnet/); required")),
    InferenceFlag(("--condition_values", "--conditions"), dict(dest="condition_values", help="condition values: '0,0.5,1' or 'start:stop:count' (default 0:1:6)")),
    InferenceFlag(("--num_sequences",), dict(type=number(int, 1), help="number of sequences (default 8)")),
    InferenceFlag(("--from_image",), dict(nargs="+", help="start from real image(s) noised to --strength (SDEdit); cycled over sequences")),
    InferenceFlag(("--from_patch",), dict(nargs="+", type=number(int, 0), help="start from these validation patches of the checkpoint's data set")),
    InferenceFlag(("--strength",), dict(type=number(float, 0, 1, low_open=True), help="noise level for --from_image/--from_patch in (0, 1] (default 0.6)")),
)


class ScoreDiffusion(DiffusionRecipe):
    summary = "pixel-space UNet conditioned on the mitosis score, a class label or nothing; transition sequences"
    demo_preset = "configs/demo.yaml"
    option_groups = ("slides", "wsi data", "pcam data", "diffusion", "conditioned diffusion")
    options = DIFFUSION_OPTIONS + CONDITION_OPTIONS
    datasets = WSI_DATASETS + PCAM_DATASETS

    def finalise(self, config: dict[str, Any]) -> None:
        super().finalise(config)
        self.check_conditions(config, ("score", "label"), ["score"] if config["dataset"] in WSI_DATASETS else [])

    def model_config(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        labels = data.num_labels if "label" in config["conditions"] else 0
        unet = unet_config(config, config["tile_size"], 3, config["conditions"], num_labels=labels)
        return {"unet": unet, "diffusion": diffusion_settings(config)}

    @staticmethod
    def renders_transitions(loaded: LoadedModel) -> bool:
        return "score" in loaded.model_config["unet"]["conditions"]

    def inference_flags(self, loaded: LoadedModel) -> tuple[InferenceFlag, ...]:
        return TRANSITION_FLAGS if self.renders_transitions(loaded) else TILE_FLAGS

    def all_inference_flags(self) -> tuple[InferenceFlag, ...]:
        return TRANSITION_FLAGS + TILE_FLAGS

    def render(self, ctx: RenderContext) -> None:
        if self.renders_transitions(ctx.first):
            render_transitions(ctx)
        else:
            render_tiles(ctx, label_name="class", pixel_space=True)


def render_transitions(ctx: RenderContext) -> None:
    """Transition sequences over condition values, scored by the classifier ensemble."""
    args, loaded, device = ctx.args, ctx.first, ctx.device
    if len(ctx.checkpoints) != 1:
        raise ConfigError("--ckpt: transition sequences take one diffusion checkpoint")
    if not args.classifier_ckpts:
        raise ConfigError("--classifier_ckpts is required to score transition sequences")
    if args.from_image and args.from_patch:
        raise ConfigError("--from_image and --from_patch contradict each other: give one")
    num_sequences = args.num_sequences if args.num_sequences is not None else 8
    strength = args.strength if args.strength is not None else 0.6
    spec = sampling_choice(args, cfg_scale=one_guidance_scale(args, "transition sequences"), checkpoints=ctx.checkpoints)
    try:
        conditions = parse_conditions(args.condition_values or "0:1:6")
        size = loaded.model_config["unet"]["image_size"]
        starts, start_names = load_start_images(args.from_image, args.from_patch, lambda: ctx.data.validation_set(loaded.config), size)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    ensemble, member_files = ctx.load_ensemble(args.classifier_ckpts, reference=loaded.config)
    if starts is not None:
        starts = starts[torch.arange(num_sequences) % len(starts)]
        spec = replace(spec, strength=strength)
    recorder = make_recorder(args)
    images = render_sequences(loaded.model, loaded.diffusion, conditions, num_sequences, size, args.seed, spec, device,
                              args.batch_size, starts, callback=recorder)
    probs = score_images(ensemble, images.flatten(0, 1), device)
    out = Path(args.out_dir)
    result: dict[str, float] = {}

    def write(folder: Path) -> None:
        result.update(write_outputs(folder, images, conditions, probs, start_names))
        save_trajectory(recorder, folder)

    staged_folder(out, write)
    print(f"ensemble of {len(member_files)}: " + ", ".join(str(f) for f in member_files))
    print(f"Spearman correlation of ensemble score and condition: {result['spearman']:.3f} over all images, "
          f"{result['sequence_spearman_mean']:.3f} per sequence (mean); sequences whose score rises with the condition "
          f"(no drop over {result['rise_tolerance']}): {result['rising_share']:.0%}")
    print(f"pictures: {out / 'grid.png'}, {out / 'score_vs_condition.png'}, {out / 'sequences'}/; "
          f"numbers: {out / 'scores.csv'}, {out / 'summary.csv'}")
