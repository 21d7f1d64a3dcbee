"""The one sampling entry: SamplingSpec, sample(), and the images every model type's sampling glue produces.

tests/fixtures/sampling_expected.pt pins the images of transition sequences (render_sequences), layout
synthesis (synthesise) and tiles (sample_tiles, pixel and latent) for fixed seeds and tiny random UNets, so
a change to the sampling path that changes what a seed renders shows up here. Each network's output on a
fixed input is stored too (`net/<name>`): when that differs, the network changed, not the sampling.
After a deliberate change of what a seed renders, rewrite the fixture from the current code with
`PYTHONPATH=. python tests/test_sampling_entry.py --regenerate`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from common.errors import ConfigError
from data.condition_maps import MapOptions, map_channels
from diffusion.autoencoder import AutoencoderKL
from diffusion.dpm_solver import dpm_solver_sample
from diffusion.gaussian_diffusion import GaussianDiffusion
from diffusion.latent import LatentDiffusion
from diffusion.samplers import ddim_sample, ddpm_sample
from diffusion.sampling import DPM_SOLVERS, SamplingSpec, parse_methods, sample
from diffusion.unet import UNet
from recipes import synthesis
from recipes.latents import sample_tiles
from recipes.render import DEFAULT_SAMPLING, sampling_choice
from recipes.transitions import render_sequences

FIXTURE = Path(__file__).parent / "fixtures" / "sampling_expected.pt"
SIZE = 4
TIMESTEPS = 20
# v-prediction keeps the random networks' images mostly inside [-1, 1], so few pinned values are clipped
OBJECTIVE = "v"
TINY = dict(image_size=SIZE, dim=8, dim_mults=(1,), num_res_blocks=1, attention_resolutions=(), num_head_channels=8,
            cond_drop_prob=0.0)
MAPS = MapOptions()
CPU = torch.device("cpu")

# transition sequences: 2 sequences x conditions (0, 1), guidance 2, one sequence per batch
TRANSITION_CASES = {
    "ddpm_all_steps": dict(sampler="ddpm", steps=20),
    "ddpm_sections": dict(sampler="ddpm", steps="5,3"),
    "ddim_eta": dict(sampler="ddim", steps=5, eta=0.5),
    "ddpm_sdedit": dict(sampler="ddpm", steps=10, strength=0.6),
    "ddim_sdedit": dict(sampler="ddim", steps=5, strength=0.6),
    "ddpm_learned_sigma": dict(sampler="ddpm", steps=10, learned_sigma=True),
}
# layout synthesis: 3 layouts at guidance 1.5 and 1, two per batch; the value is the --timestep_respacing text
LAYOUT_CASES = {"ddim": "ddim4", "ddpm_sections": "5", "ddpm_all_steps": "20"}
# tiles: (network, --timestep_respacing, guidance)
TILE_CASES = {
    "label_ddim": ("label", "ddim4", 2.0),
    "label_ddpm": ("label", "5", 2.0),
    "unconditional_ddpm": ("unconditional", "20", 2.0),
    "latent_ddim": ("latent", "ddim4", 2.0),
}


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn from one seeded generator in name order (independent of how modules initialise)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


def build_networks() -> dict[str, torch.nn.Module]:
    autoencoder = randomised(AutoencoderKL(channels=8, channel_mult=(1, 2), latent_channels=4), 6)
    latent_unet = UNet(**{**TINY, "image_size": SIZE // 2, "in_channels": 4, "out_channels": 4},
                       conditions=("label",), num_labels=3)
    return {
        "score": randomised(UNet(**TINY, conditions=("score",)), 1),
        "score_learned_sigma": randomised(UNet(**TINY, out_channels=6, conditions=("score",)), 2),
        "semantic": randomised(UNet(**TINY, out_channels=6, conditions=("semantic",), semantic_channels=map_channels(MAPS),
                                    resblock_updown=True), 3),
        "label": randomised(UNet(**TINY, out_channels=6, conditions=("label",), num_labels=3), 4),
        "unconditional": randomised(UNet(**TINY, conditions=()), 5),
        "latent": LatentDiffusion(randomised(latent_unet, 7), autoencoder, 0.5).eval(),
    }


def process(learned_sigma: bool = False) -> GaussianDiffusion:
    return GaussianDiffusion.from_config("cosine", TIMESTEPS, objective=OBJECTIVE, learn_sigma=learned_sigma)


def probe(name: str, network: torch.nn.Module) -> torch.Tensor:
    """The network's output on a fixed input, with its conditions."""
    generator = torch.Generator().manual_seed(99)
    config = network.config
    x = torch.randn(2, config["in_channels"], config["image_size"], config["image_size"], generator=generator)
    cond = {}
    if "score" in config["conditions"]:
        cond["score"] = torch.tensor([0.0, 1.0])
    if "label" in config["conditions"]:
        cond["label"] = torch.tensor([0, 2])
    if "semantic" in config["conditions"]:
        cond["semantic"] = torch.rand(2, map_channels(MAPS), SIZE, SIZE, generator=generator).round()
    with torch.no_grad():
        return network(x, torch.tensor([3, 17]), cond, torch.zeros(2, dtype=torch.bool))


def start_images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    return torch.rand(2, 3, SIZE, SIZE, generator=generator) * 2 - 1


class FakeLayouts:
    """The parts of LayoutPatches that synthesise reads."""

    maps = MAPS

    def __init__(self, count: int = 3):
        generator = torch.Generator().manual_seed(8)
        self.samples = [
            {"semantic": torch.rand(map_channels(MAPS), SIZE, SIZE, generator=generator).round(),
             "inst_mask": torch.zeros(SIZE, SIZE, dtype=torch.int32),
             "image": torch.zeros(3, SIZE, SIZE),
             "meta": {"name": f"layout{i}"}}
            for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def transition_spec(case: dict) -> tuple[SamplingSpec, bool]:
    fields = {k: v for k, v in case.items() if k != "learned_sigma"}
    return SamplingSpec(cfg_scale=2.0, **fields), "strength" in case


def run_transitions(networks, case: dict) -> torch.Tensor:
    spec, sdedit = transition_spec(case)
    name = "score_learned_sigma" if case.get("learned_sigma") else "score"
    return render_sequences(networks[name], process(case.get("learned_sigma", False)), [0.0, 1.0], 2, SIZE, 7, spec, CPU,
                            sequences_per_batch=1, start_images=start_images() if sdedit else None, progress=False)


def run_layouts(networks, respacing: str, folder: Path, monkeypatch) -> torch.Tensor:
    written = []
    monkeypatch.setattr(synthesis, "save_sample", lambda folder, name, image, inst, picture: written.append(image))
    job = synthesis.SynthesisJob(networks["semantic"], process(True), "m0")
    synthesis.synthesise([job], FakeLayouts(), [1.5, 1.0], 3, 2, "in_order", SamplingSpec.parse_respacing(respacing), 3, CPU, folder)
    return torch.stack(written)


def run_tiles(networks, network: str, respacing: str, scale: float) -> torch.Tensor:
    model = networks[network]
    labels = None if network == "unconditional" else torch.tensor([0, 1, 2])
    generator = torch.Generator().manual_seed(11)
    learned_sigma = model.config["out_channels"] == 2 * model.config["in_channels"]
    spec = SamplingSpec.parse_respacing(respacing, cfg_scale=scale)
    return sample_tiles(model, process(learned_sigma), labels, 3, spec, generator, CPU)


@pytest.fixture(scope="module")
def networks():
    return build_networks()


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURE, weights_only=True)


def assert_same(actual: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal up to float reassociation: the CPU and its thread count move these values by ~1e-6 at most, while
    any change of the sampling path (other noise, timesteps, guidance) moves them by far more."""
    torch.testing.assert_close(actual, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["score", "score_learned_sigma", "semantic", "label", "unconditional", "latent"])
def test_the_networks_are_the_pinned_ones(networks, expected, name):
    assert_same(probe(name, networks[name]), expected[f"net/{name}"])


@pytest.mark.parametrize("case", list(TRANSITION_CASES))
def test_transition_sequences_are_pinned(networks, expected, case):
    images = run_transitions(networks, TRANSITION_CASES[case])
    assert images.shape == (2, 2, 3, SIZE, SIZE)
    assert_same(images, expected[f"transitions/{case}"])


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_layout_synthesis_is_pinned(networks, expected, case, tmp_path, monkeypatch):
    images = run_layouts(networks, LAYOUT_CASES[case], tmp_path / "out", monkeypatch)
    assert images.shape == (6, 3, SIZE, SIZE)
    assert_same(images, expected[f"layouts/{case}"])


@pytest.mark.parametrize("case", list(TILE_CASES))
def test_tiles_are_pinned(networks, expected, case):
    images = run_tiles(networks, *TILE_CASES[case])
    assert images.shape == (3, 3, SIZE, SIZE)
    assert_same(images, expected[f"tiles/{case}"])


class Recording(torch.nn.Module):
    """Wraps a conditional network and records the batch size and drop_cond of every call."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network
        self.calls: list[tuple[int, torch.Tensor]] = []

    def forward(self, x, t, cond=None, drop_cond=None):
        self.calls.append((x.shape[0], drop_cond.clone()))
        return self.network(x, t, cond, drop_cond)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m"])
def test_guidance_scale_one_is_the_plain_conditional_pass(networks, sampler):
    model = Recording(networks["score"])
    diffusion = process()
    x_T = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    cond = {"score": torch.tensor([0.0, 0.5, 1.0])}
    spec = SamplingSpec(sampler, 20 if sampler == "ddpm" else 6, eta=1.0, cfg_scale=1.0)
    images = sample(model, diffusion, x_T, cond, spec, generator=torch.Generator().manual_seed(2))
    assert model.calls and all(batch == 3 and not drop.any() for batch, drop in model.calls)

    def plain(x, t):
        return networks["score"](x, t, cond, torch.zeros(x.shape[0], dtype=torch.bool))

    if sampler in DPM_SOLVERS:
        order, sde = DPM_SOLVERS[sampler]
        run, kwargs = dpm_solver_sample, {"steps": 6, "order": order, "sde": sde}
    else:
        run = ddpm_sample if sampler == "ddpm" else ddim_sample
        kwargs = {} if sampler == "ddpm" else {"steps": 6, "eta": 1.0}
    reference = run(diffusion, plain, x_T, generator=torch.Generator().manual_seed(2), **kwargs)
    assert torch.equal(images, reference)


def test_guidance_runs_both_passes_as_one_batch(networks):
    model = Recording(networks["score"])
    x_T = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    sample(model, process(), x_T, {"score": torch.tensor([0.0, 0.5, 1.0])}, SamplingSpec("ddim", 4, cfg_scale=2.0),
           generator=torch.Generator().manual_seed(2))
    assert len(model.calls) == 4
    for batch, drop in model.calls:
        assert batch == 6 and drop.tolist() == [False] * 3 + [True] * 3


class ConditionBlind(torch.nn.Module):
    """A network whose output ignores the condition, so only the noise decides the image."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network
        self.config = {"conditions": ["score"]}

    def forward(self, x, t, cond=None, drop_cond=None):
        return self.network(x, t)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "dpmpp_2m_sde"])
@pytest.mark.parametrize("sdedit", [False, True])
def test_a_condition_blind_network_renders_one_image_per_sequence(networks, sampler, sdedit):
    model = ConditionBlind(networks["unconditional"])
    spec = SamplingSpec(sampler, 20 if sampler == "ddpm" else 8, eta=1.0, cfg_scale=2.0, strength=0.7 if sdedit else 1.0)
    starts = start_images() if sdedit else None
    images = render_sequences(model, process(), [0.0, 0.25, 0.5, 1.0], 2, SIZE, 3, spec, CPU, sequences_per_batch=2,
                              start_images=starts, progress=False)
    assert images.shape == (2, 4, 3, SIZE, SIZE)
    for s in range(2):
        for k in range(1, 4):
            assert torch.equal(images[s, 0], images[s, k]), (s, k)
    assert not torch.allclose(images[0, 0], images[1, 0])


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "dpmpp_2m_sde"])
def test_clip_x0_reaches_the_sampler(networks, sampler):
    x_T = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 3
    cond = {"score": torch.tensor([0.0, 1.0])}
    seen = {}
    for clip in (True, False):
        pred = []
        sample(networks["score"], process(), x_T, cond, SamplingSpec(sampler, 3, clip_x0=clip),
               generator=None, callback=lambda i, t, x, x0: pred.append(x0))
        seen[clip] = torch.stack(pred)
    assert seen[True].abs().max() <= 1.0
    assert seen[False].abs().max() > 1.0


@pytest.mark.parametrize("text, sampler, steps", [
    ("ddim50", "ddim", 50), (" ddim7 ", "ddim", 7), ("250", "ddpm", 250), ("10,15,20", "ddpm", "10,15,20"),
    ("10, 15", "ddpm", "10,15"),
])
def test_parse_respacing(text, sampler, steps):
    spec = SamplingSpec.parse_respacing(text, eta=0.5, cfg_scale=3.0)
    assert (spec.sampler, spec.steps, spec.eta, spec.cfg_scale, spec.clip_x0, spec.strength) == (sampler, steps, 0.5, 3.0, True, 1.0)


@pytest.mark.parametrize("text, message", [
    ("ddim", "expected ddimN, e.g. ddim50"), ("ddimx", "expected ddimN, e.g. ddim50"), ("ddim0", "expected ddimN"),
    ("abc", "expected ddimN or section counts like 250 or 10,15,20"), ("10,,20", "section counts"), ("0", "section counts"),
    ("-5", "section counts"), ("", "section counts"),
])
def test_parse_respacing_errors_name_the_flag(text, message):
    with pytest.raises(ValueError, match="--timestep_respacing") as err:
        SamplingSpec.parse_respacing(text)
    assert message in str(err.value) and repr(text.strip()) in str(err.value)


def cli(**values) -> argparse.Namespace:
    return argparse.Namespace(**{"timestep_respacing": None, "sampler": None, "steps": None, "eta": 0.0, **values})


def test_sampling_choice_from_the_flags():
    assert sampling_choice(cli()) == SamplingSpec("ddim", 50)
    assert sampling_choice(cli(sampler="ddpm", steps=30), cfg_scale=2.0) == SamplingSpec("ddpm", 30, cfg_scale=2.0)
    assert sampling_choice(cli(timestep_respacing="10,15", eta=0.3)) == SamplingSpec("ddpm", "10,15", eta=0.3)
    with pytest.raises(ConfigError, match="--timestep_respacing: expected ddimN"):
        sampling_choice(cli(timestep_respacing="ddimx"))
    with pytest.raises(ConfigError, match="--timestep_respacing replaces --sampler/--steps"):
        sampling_choice(cli(timestep_respacing="ddim5", steps=5))
    with pytest.raises(ConfigError, match="--steps must be at least 1"):
        sampling_choice(cli(steps=0))


def loaded_stub(model_type: str, timesteps: int = 1000):
    return SimpleNamespace(model_type=model_type, diffusion=SimpleNamespace(num_timesteps=timesteps), path=Path("x.pt"))


@pytest.mark.parametrize("model_type", sorted(DEFAULT_SAMPLING))
def test_each_model_type_renders_with_its_default_sampler(model_type):
    sampler, steps = DEFAULT_SAMPLING[model_type]
    assert sampling_choice(cli(), checkpoints=[loaded_stub(model_type)]) == SamplingSpec(sampler, steps)
    assert sampling_choice(cli(steps=7), checkpoints=[loaded_stub(model_type)]) == SamplingSpec(sampler, 7)
    other = "ddpm" if sampler != "ddpm" else "ddim"
    assert sampling_choice(cli(sampler=other), checkpoints=[loaded_stub(model_type)]).steps == 50
    assert sampling_choice(cli(), checkpoints=[loaded_stub(model_type, timesteps=5)]).steps == 5


def test_parse_methods_reads_sampler_steps_lists():
    assert parse_methods(" ddim:50, dpmpp_2m:10 ,ddpm:1000") == [("ddim", 50), ("dpmpp_2m", 10), ("ddpm", 1000)]
    for bad in ("ddim", "ddim:0", "euler:10", "ddim:5,dpmpp_2m:x", ""):
        with pytest.raises(ValueError, match="sampler:steps"):
            parse_methods(bad)


def test_step_spacing_is_only_for_dpm_solver():
    spec = sampling_choice(cli(sampler="dpmpp_2m", step_spacing="karras"), checkpoints=[loaded_stub("sdm")])
    assert spec.spacing == "karras"
    with pytest.raises(ConfigError, match="--step_spacing karras is for the DPM-Solver"):
        sampling_choice(cli(sampler="ddim", step_spacing="karras"), checkpoints=[loaded_stub("sdm")])


@pytest.mark.parametrize("fields, message", [
    (dict(sampler="euler"), "sampler must be one of ddpm, ddim"),
    (dict(sampler="ddim", steps="10,15"), "ddim steps must be a positive integer"),
    (dict(sampler="ddpm", steps="10,x"), "ddpm steps must be"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(eta=-0.1), "eta must be"),
    (dict(cfg_scale=float("nan")), "cfg_scale must be"),
    (dict(strength=0.0), "strength must be in"),
    (dict(clip_x0=1), "clip_x0 must be"),
])
def test_spec_checks_its_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        SamplingSpec(**fields)


def test_strength_needs_start_images(networks):
    x_T = torch.randn(1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="no start_images"):
        sample(networks["score"], process(), x_T, {"score": torch.zeros(1)}, SamplingSpec(strength=0.5), generator=None)


def pinned_outputs(folder: Path) -> dict[str, torch.Tensor]:
    """Everything the fixture holds, computed by the current code."""
    networks = build_networks()
    out = {f"net/{name}": probe(name, network) for name, network in networks.items()}
    out.update({f"transitions/{case}": run_transitions(networks, c) for case, c in TRANSITION_CASES.items()})
    with pytest.MonkeyPatch.context() as monkeypatch:
        for case, text in LAYOUT_CASES.items():
            out[f"layouts/{case}"] = run_layouts(networks, text, folder / case, monkeypatch)
    out.update({f"tiles/{case}": run_tiles(networks, *c) for case, c in TILE_CASES.items()})
    return {name: value.contiguous().clone() for name, value in out.items()}


if __name__ == "__main__":
    import sys
    import tempfile

    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: PYTHONPATH=. python tests/test_sampling_entry.py --regenerate")
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(pinned_outputs(Path(tmp)), FIXTURE)
    print(f"wrote {FIXTURE}")
