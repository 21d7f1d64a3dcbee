"""Style-extracting diffusion (STEDM): a UNet that follows a region layout (concatenated to its input) and takes
its stain style from reference crops through a trainable style encoder, in pixel space or (with
--autoencoder_ckpt) on the latents of a frozen vqvae / autoencoder_kl as the original work does; layout-to-image
synthesis with the style of other (by default held-out) slides, guided on the style only with CFG-rescale."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.errors import ConfigError
from common.figures import labelled_grid, to_uint8
from common.files import staged_folder, write_csv_atomic
from tqdm import tqdm
from common.options import Option, flag_bool, number
from data.families import STYLE_DATASETS
from data.base import one_hot
from data.style_sources import PAIRINGS, StyleSource, TileLayouts, dataset_styles, folder_styles, pair_styles
from diffusion import sampling
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.latent import LatentDiffusion
from diffusion.style import AGGREGATORS, BACKBONES
from recipes.base import Built, InferenceFlag, RenderContext
from recipes.diffusion_base import DIFFUSION_OPTIONS, DiffusionRecipe, diffusion_settings, unet_config
from recipes.latent import AUTOENCODER_OPTIONS, latent_network, latent_space, load_autoencoder
from recipes.tasks import DiffusionTask, Task
from recipes.render import one_guidance_scale, sampling_choice, single_checkpoint

O = Option
STEDM_OPTIONS: tuple[Option, ...] = (
    O("style_encoder", str, "resnet18", "torchvision backbone of the style encoder (swin_v2_t in the original work)", BACKBONES, "stedm"),
    O("style_encoder_weights", str, None, "local torchvision state dict to start the style encoder's backbone from (default: random init)", None, "stedm"),
    O("style_dim", number(int, 1), 512, "width of the style vectors", None, "stedm"),
    O("style_agg", str, "mean", "how the vectors of the style crops are merged", AGGREGATORS, "stedm"),
    O("style_drop_prob", number(float, 0, 1), 0.25, "probability of dropping the style to its learned null in training (for guidance)", None, "stedm"),
    O("freeze_style_encoder", flag_bool, False, "keep the style encoder's weights (and batch-norm statistics) fixed", None, "stedm"),
)
STYLE_SPLITS = ("heldout", "train", "all")
STEDM_FLAGS = (
    InferenceFlag(("--layouts",), dict(help="layouts: val (the run's validation patches, default) or a tile-pair folder (images/*.png + masks/*.png)")),
    InferenceFlag(("--styles",), dict(help="style sources: heldout (the run's held-out slides: zero-shot, default), train, all, or a folder of slides or images")),
    InferenceFlag(("--pairing",), dict(choices=PAIRINGS, help="which style unit each layout takes: random, same_slide (its own) or cross (any other); default random")),
    InferenceFlag(("--num_samples",), dict(type=number(int, 1), help="tiles per checkpoint (default 16)")),
    InferenceFlag(("--cfg_rescale",), dict(type=number(float, 0, 1), help="CFG-rescale in [0, 1] of the style guidance (default 0.7)")),
)
DEFAULT_CFG_SCALE = 1.5
DEFAULT_CFG_RESCALE = 0.7
DEFAULT_NUM_SAMPLES = 16
GRID_ROWS = 8
PALETTE = np.array([[255, 255, 255], [244, 166, 200], [106, 61, 154], [31, 120, 180], [51, 160, 44], [255, 127, 0],
                    [227, 26, 28], [177, 89, 40]], dtype=np.uint8)


def style_network(model: nn.Module) -> nn.Module:
    """The style encoder inside a style-conditioned UNet (pixel or latent)."""
    model = getattr(model, "module", model)
    return getattr(model, "unet", model).cond_embed.embeddings["style"].encoder



def _keep_eval(module: nn.Module, _inputs: Any) -> None:
    module.eval()


class StyleDiffusion(DiffusionRecipe):
    summary = "pixel UNet on a region layout (concatenated) and a style from reference crops (STEDM); styled layout-to-image synthesis"
    demo_preset = "configs/demo_stedm.yaml"
    option_groups = ("slides", "region data", "diffusion", "latent space", "stedm")
    options = DIFFUSION_OPTIONS + AUTOENCODER_OPTIONS + STEDM_OPTIONS
    datasets = STYLE_DATASETS

    def finalise(self, config: dict[str, Any]) -> None:
        super().finalise(config)
        if config["style_sampling"] == "none" or config["num_style_images"] < 1:
            raise ConfigError("stedm needs style crops: give --num_style_images >= 1 and a --style_sampling other than none")
        weights = config["style_encoder_weights"]
        if weights and not Path(weights).is_file():
            raise ConfigError(f"--style_encoder_weights: file {weights} does not exist")

    def model_config(self, config: dict[str, Any], data: Any) -> dict[str, Any]:
        """Pixel space; a latent run is configured in build(), which has the device to measure the latent scale on."""
        return self.styled_config(config, data)

    def styled_config(self, config: dict[str, Any], data: Any, autoencoder: nn.Module | None = None,
                      latent: dict[str, Any] | None = None) -> dict[str, Any]:
        """The UNet on pixels, or on the latent grid of `autoencoder` with `latent` (recipes.latent.latent_space)."""
        num_classes = data.train_items.num_classes
        style = {"encoder": config["style_encoder"], "style_dim": config["style_dim"],
                 "num_images": config["num_style_images"], "aggregation": config["style_agg"], "encoder_weights": None}
        size, channels = data.tile_size, 3
        if autoencoder is not None:
            size, channels = size // autoencoder.downsample_factor, autoencoder.latent_channels
        unet = unet_config(config, size, channels, ["style", "semantic"], semantic_channels=num_classes,
                           concat_semantic=True, semantic_spade=False, style_encoder=style)
        unet["cond_drop_prob"] = {"style": config["style_drop_prob"], "semantic": 0.0}
        return {"unet": unet, "diffusion": diffusion_settings(config), "num_classes": num_classes, **(latent or {})}

    def build_network(self, model_config: dict[str, Any]) -> nn.Module:
        unet = super().build_network(model_config)
        return latent_network(unet, model_config) if "autoencoder" in model_config else unet

    def task(self, config: dict[str, Any], model_config: dict[str, Any]) -> Task:
        return DiffusionTask(GaussianDiffusion.from_config(**model_config["diffusion"]), self.conditions(config),
                             encode="autoencoder" in model_config)

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
        if state is not None or not config["autoencoder_ckpt"]:
            built = super().build(config, data, state, device, run_dir)
        else:
            built = self.build_latent(config, data, device)
        if config.get("freeze_style_encoder"):
            encoder = style_network(built.model)
            encoder.requires_grad_(False)
            encoder.register_forward_pre_hook(_keep_eval)
        return built

    def build_latent(self, config: dict[str, Any], data: Any, device: torch.device) -> Built:
        """A fresh latent run: the autoencoder of --autoencoder_ckpt loaded once, its latent scale measured on `device`."""
        autoencoder, ae_state = load_autoencoder(config["autoencoder_ckpt"], device)
        model_config = self.styled_config(config, data, autoencoder, latent_space(config, data, autoencoder, ae_state, device))
        model = self.build_network(model_config)
        self.initialise(model, config)
        if config.get("init_from"):
            self.init_from(model, model_config, config["init_from"])
        model.autoencoder.load_state_dict(autoencoder.state_dict())
        return Built(model, model_config, self.task(config, model_config), data)

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


def layout_source(ctx: RenderContext, loaded: Any) -> tuple[Any, str]:
    """The --layouts source and its name: the run's validation patches or a tile-pair folder."""
    which = ctx.args.layouts or "val"
    if which == "val":
        return run_patches(ctx, loaded, "--layouts val"), "val"
    folder = Path(which)
    if not (folder / "images").is_dir():
        raise ConfigError(f"--layouts {folder}: expected val or a tile-pair folder (images/*.png, masks/*.png)")
    return TileLayouts(folder, int(loaded.model_config["num_classes"])), str(folder)


def run_patches(ctx: RenderContext, loaded: Any, flag: str) -> Any:
    """The validation patches of the checkpoint's run (they reach every slide of its data set)."""
    patches = ctx.data.validation_set(loaded.config)
    if patches is None or len(patches) == 0:
        raise ConfigError(f"{flag}: the run of --ckpt {loaded.path} has no validation patches (--val_fraction 0); give a folder")
    return patches


def style_source(ctx: RenderContext, loaded: Any, size: int, layouts: Any) -> StyleSource:
    """The --styles source: units of the run's data by split, or a folder of slides or images."""
    which = ctx.args.styles or "heldout"
    if which not in STYLE_SPLITS:
        return folder_styles(which, size)
    data = layouts if hasattr(layouts, "style_units") else run_patches(ctx, loaded, f"--styles {which}")
    return dataset_styles(data, data.style_units(which), which)


def render_styled(ctx: RenderContext) -> None:
    """Tiles from --layouts with the style of --styles units paired by --pairing, guided on the style only."""
    single_checkpoint(ctx)
    args, loaded, device = ctx.args, ctx.first, ctx.device
    num_samples = args.num_samples if args.num_samples is not None else DEFAULT_NUM_SAMPLES
    rescale = args.cfg_rescale if args.cfg_rescale is not None else DEFAULT_CFG_RESCALE
    scale = DEFAULT_CFG_SCALE if args.cfg_scale is None else one_guidance_scale(args, "stedm tiles")
    latent = isinstance(loaded.model, LatentDiffusion)
    spec = replace(sampling_choice(args, cfg_scale=scale, checkpoints=ctx.checkpoints), cfg_rescale=rescale, guided_conditions=("style",), clip_x0=not latent)
    layouts, layout_name = layout_source(ctx, loaded)
    image_size = int(loaded.model_config.get("image_size", loaded.model_config["unet"]["image_size"]))
    styles = style_source(ctx, loaded, image_size, layouts)
    count = int(loaded.model_config["unet"]["style_encoder"]["num_images"])
    rng = np.random.default_rng([args.seed, 5])
    chosen = [int(rng.integers(len(layouts))) for _ in range(num_samples)]
    units = pair_styles([layouts.unit_of(i) for i in chosen], styles.units, args.pairing or "random", rng)
    written: dict[str, int] = {}

    def write(folder: Path) -> None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
        rows, grid = [], []
        unet = loaded.model.config
        for first in tqdm(range(0, num_samples, args.batch_size), desc="stedm tiles"):
            batch = list(zip(chosen, units))[first:first + args.batch_size]
            pairs = [layouts.layout(i) for i, _ in batch]
            crops = [styles.crops(unit, rng, count) for _, unit in batch]
            semantic = torch.stack([torch.from_numpy(one_hot(labels, int(loaded.model_config["num_classes"]))) for _, labels in pairs]).to(device)
            style = torch.from_numpy(np.stack(crops)).to(device)
            x_T = torch.randn((len(batch), unet["in_channels"], unet["image_size"], unet["image_size"]), generator=generator,
                              device=generator.device).to(device)
            out = sampling.sample(loaded.model, loaded.diffusion, x_T, {"style": style, "semantic": semantic}, spec, generator=generator,
                                  progress=True)
            images = (loaded.model.decode(out) if latent else out).float().clamp(-1, 1).cpu()
            for k, ((index, unit), (real, labels), image) in enumerate(zip(batch, pairs, images)):
                n = first + k
                row = write_tile(folder, n, image, real, labels, crops[k])
                rows.append({**row, "layout_source": layout_name, "layout_unit": layouts.unit_of(index), "layout_index": index,
                             "style_source": styles.name, "style_units": ";".join([unit] * count), "cfg_scale": scale,
                             "cfg_rescale": rescale, "seed": args.seed})
                if len(grid) < GRID_ROWS:
                    grid.append([layout_picture(labels), *torch.from_numpy(crops[k]), image])
        write_csv_atomic(folder / "samples.csv", list(rows[0]), rows)
        captions = [["layout", *[Path(units[r]).stem[-11:]] * count, "generated"] for r in range(len(grid))]
        labelled_grid(grid, captions, scale=2 if grid[0][0].shape[-1] <= 64 else 1, caption_lines=1).save(folder / "grid.png")
        written["n"] = len(rows)

    staged_folder(Path(args.out_dir), write)
    print(f"{written['n']} tiles: layouts from {layout_name}, styles from {styles.name} ({args.pairing or 'random'} pairing; "
          f"guidance {scale:g} on the style, rescale {rescale:g}) into {args.out_dir}; pictures: {Path(args.out_dir) / 'grid.png'}; "
          f"list: {Path(args.out_dir) / 'samples.csv'}")


def write_tile(folder: Path, n: int, image: torch.Tensor, real: np.ndarray, labels: np.ndarray, crops: np.ndarray) -> dict[str, str]:
    """img_n (generated), seg_n (its layout, class indices), real_n (the layout's own image), style_n_k (the crops)."""
    names = {"file": f"img_{n:05d}.png", "mask": f"seg_{n:05d}.png", "layout_file": f"real_{n:05d}.png"}
    Image.fromarray(to_uint8(image)).save(folder / names["file"])
    Image.fromarray(labels.astype(np.uint8)).save(folder / names["mask"])
    Image.fromarray(real).save(folder / names["layout_file"])
    style_files = []
    for k, crop in enumerate(crops):
        style_files.append(f"style_{n:05d}_{k}.png")
        Image.fromarray(to_uint8(torch.from_numpy(crop))).save(folder / style_files[-1])
    return {**names, "style_files": ";".join(style_files)}
