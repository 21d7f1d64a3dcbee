"""Style-extracting diffusion (STEDM): a pixel-space UNet that follows a region layout (concatenated to its input)
and takes its stain style from reference crops through a trainable style encoder; layout-to-image synthesis with
the style of other (by default held-out) slides, guided on the style only with CFG-rescale."""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.errors import ConfigError
from common.figures import labelled_grid, to_uint8
from common.files import staged_folder
from common.options import Option, flag_bool
from data.families import REGION_DATASETS
from diffusion import sampling
from diffusion.style import AGGREGATORS, BACKBONES
from recipes.base import Built, InferenceFlag, RenderContext
from recipes.diffusion_base import DIFFUSION_OPTIONS, DiffusionRecipe, diffusion_settings, unet_config
from recipes.render import one_guidance_scale, sampling_choice, single_checkpoint

O = Option
STEDM_OPTIONS: tuple[Option, ...] = (
    O("style_encoder", str, "resnet18", "torchvision backbone of the style encoder (swin_v2_t in the original work)", BACKBONES, "stedm"),
    O("style_encoder_weights", str, None, "local torchvision state dict to start the style encoder's backbone from (default: random init)", None, "stedm"),
    O("style_dim", int, 512, "width of the style vectors", None, "stedm"),
    O("style_agg", str, "mean", "how the vectors of the style crops are merged", AGGREGATORS, "stedm"),
    O("style_drop_prob", float, 0.25, "probability of dropping the style to its learned null in training (for guidance)", None, "stedm"),
    O("freeze_style_encoder", flag_bool, False, "keep the style encoder's weights (and batch-norm statistics) fixed", None, "stedm"),
)
STYLE_SPLITS = ("heldout", "train", "all")
STEDM_FLAGS = (
    InferenceFlag(("--style_slides",), dict(choices=STYLE_SPLITS, help="slides the style crops come from: heldout (zero-shot, default), train or all")),
    InferenceFlag(("--num_samples",), dict(type=int, help="tiles per checkpoint and guidance scale (default 16)")),
    InferenceFlag(("--cfg_rescale",), dict(type=float, help="CFG-rescale in [0, 1] of the style guidance (default 0.7)")),
)
DEFAULT_CFG_SCALE = 1.5
DEFAULT_CFG_RESCALE = 0.7
DEFAULT_NUM_SAMPLES = 16
GRID_ROWS = 8
PALETTE = np.array([[255, 255, 255], [244, 166, 200], [106, 61, 154], [31, 120, 180], [51, 160, 44], [255, 127, 0],
                    [227, 26, 28], [177, 89, 40]], dtype=np.uint8)


def style_network(model: nn.Module) -> nn.Module:
    """The style encoder inside a style-conditioned UNet."""
    return getattr(model, "module", model).cond_embed.embeddings["style"].encoder



def _keep_eval(module: nn.Module, _inputs: Any) -> None:
    module.eval()


class StyleDiffusion(DiffusionRecipe):
    summary = "pixel UNet on a region layout (concatenated) and a style from reference crops (STEDM); styled layout-to-image synthesis"
    demo_preset = "configs/demo_stedm.yaml"
    option_groups = ("region data", "diffusion", "stedm")
    options = DIFFUSION_OPTIONS + STEDM_OPTIONS
    datasets = REGION_DATASETS

    def finalise(self, config: dict[str, Any]) -> None:
        super().finalise(config)
        if config["style_sampling"] == "none" or config["num_style_images"] < 1:
            raise ConfigError("stedm needs style crops: give --num_style_images >= 1 and a --style_sampling other than none")
        if config["style_dim"] < 1:
            raise ConfigError(f"--style_dim must be at least 1, got {config['style_dim']}")
        if not 0.0 <= config["style_drop_prob"] <= 1.0:
            raise ConfigError(f"--style_drop_prob must be in [0, 1], got {config['style_drop_prob']}")
        weights = config["style_encoder_weights"]
        if weights and not Path(weights).is_file():
            raise ConfigError(f"--style_encoder_weights: file {weights} does not exist")

    def model_config(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        num_classes = data.train_items.slides.num_classes
        style = {"encoder": config["style_encoder"], "style_dim": config["style_dim"],
                 "num_images": config["num_style_images"], "aggregation": config["style_agg"], "encoder_weights": None}
        unet = unet_config(config, config["tile_size"], 3, ["style", "semantic"], semantic_channels=num_classes,
                           concat_semantic=True, semantic_spade=False, style_encoder=style)
        unet["cond_drop_prob"] = {"style": config["style_drop_prob"], "semantic": 0.0}
        return {"unet": unet, "diffusion": diffusion_settings(config), "num_classes": num_classes}

    def conditions(self, config: dict[str, Any]) -> list[str]:
        return ["style", "semantic"]

    def initialise(self, model: nn.Module, config: dict[str, Any]) -> None:
        """The style encoder's backbone from --style_encoder_weights (the checkpoint then holds them)."""
        if config.get("style_encoder_weights"):
            try:
                style_network(model).load_backbone(config["style_encoder_weights"])
            except (FileNotFoundError, ValueError) as err:
                raise ConfigError(str(err)) from None

    def build(self, config: dict[str, Any], data: Any, state: dict | None, device: torch.device, run_dir: Path) -> Built:
        built = super().build(config, data, state, device, run_dir)
        if config.get("freeze_style_encoder"):
            encoder = style_network(built.model)
            encoder.requires_grad_(False)
            encoder.register_forward_pre_hook(_keep_eval)
        return built

    def inference_flags(self, loaded: Any) -> tuple[InferenceFlag, ...]:
        return STEDM_FLAGS

    def all_inference_flags(self) -> tuple[InferenceFlag, ...]:
        return STEDM_FLAGS

    def render(self, ctx: RenderContext) -> None:
        render_styled(ctx)


def layout_picture(labels: np.ndarray) -> torch.Tensor:
    """A class-index mask as a 3 x H x W picture in [-1, 1] (one colour per class)."""
    rgb = PALETTE[np.asarray(labels) % len(PALETTE)]
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1.0


def render_styled(ctx: RenderContext) -> None:
    """Tiles from validation layouts with the style of crops from --style_slides, guided on the style only."""
    single_checkpoint(ctx)
    args, loaded, device = ctx.args, ctx.first, ctx.device
    num_samples = args.num_samples if args.num_samples is not None else DEFAULT_NUM_SAMPLES
    if num_samples < 1:
        raise ConfigError(f"--num_samples must be at least 1, got {num_samples}")
    rescale = args.cfg_rescale if args.cfg_rescale is not None else DEFAULT_CFG_RESCALE
    if not 0.0 <= rescale <= 1.0:
        raise ConfigError(f"--cfg_rescale must be in [0, 1], got {rescale}")
    scale = DEFAULT_CFG_SCALE if args.cfg_scale is None else one_guidance_scale(args, "stedm tiles")
    spec = replace(sampling_choice(args, cfg_scale=scale), cfg_rescale=rescale, guided_conditions=("style",))
    layouts = ctx.data.validation_set(loaded.config)
    if layouts is None or len(layouts) == 0:
        raise ConfigError(f"--ckpt {loaded.path}: the run has no validation patches to take layouts from (--val_fraction 0)")
    which = args.style_slides or "heldout"
    sources = layouts.slides.names(which)
    if not sources:
        raise ConfigError(f"--style_slides {which}: the data set has no such slides")
    count = int(loaded.model_config["unet"]["style_encoder"]["num_images"])
    rng = np.random.default_rng([args.seed, 5])
    picks = [(int(rng.integers(len(layouts))), sources[int(rng.integers(len(sources)))]) for _ in range(num_samples)]
    written: dict[str, int] = {}

    def write(folder: Path) -> None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
        rows, grid = [], []
        for first in range(0, num_samples, args.batch_size):
            batch = picks[first:first + args.batch_size]
            items = [layouts[i] for i, _ in batch]
            styles = [layouts.style_crops(slide, rng, count=count, mode="multi_patch") for _, slide in batch]
            semantic = torch.stack([torch.as_tensor(item["semantic"]) for item in items]).to(device)
            style = torch.from_numpy(np.stack(styles)).to(device)
            size = semantic.shape[-1]
            x_T = torch.randn((len(batch), 3, size, size), generator=generator, device=generator.device).to(device)
            images = sampling.sample(loaded.model, loaded.diffusion, x_T, {"style": style, "semantic": semantic}, spec,
                                     generator=generator).cpu()
            for k, (item, (_, slide), image) in enumerate(zip(items, batch, images)):
                index = first + k
                labels = np.asarray(item["semantic"]).argmax(0).astype(np.uint8)
                Image.fromarray(to_uint8(image)).save(folder / f"img_{index:05d}.png")
                Image.fromarray(labels).save(folder / f"seg_{index:05d}.png")
                meta = item["meta"]
                rows.append({"file": f"img_{index:05d}.png", "mask": f"seg_{index:05d}.png", "layout_slide": meta["slide"],
                             "layout_x": meta["x"], "layout_y": meta["y"], "style_slide": slide, "cfg_scale": scale,
                             "cfg_rescale": rescale, "seed": args.seed})
                if len(grid) < GRID_ROWS:
                    grid.append([layout_picture(labels), *torch.from_numpy(styles[k]), image])
        with (folder / "samples.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        captions = [["layout", *[Path(rows[r]["style_slide"]).stem[-11:]] * count, "generated"] for r in range(len(grid))]
        labelled_grid(grid, captions, scale=2 if grid[0][0].shape[-1] <= 64 else 1, caption_lines=1).save(folder / "grid.png")
        written["n"] = len(rows)

    staged_folder(Path(args.out_dir), write)
    print(f"{written['n']} tiles with styles from the {which} slides (guidance {scale:g} on the style, rescale {rescale:g}) "
          f"into {args.out_dir}; pictures: {Path(args.out_dir) / 'grid.png'}; list: {Path(args.out_dir) / 'samples.csv'}")
