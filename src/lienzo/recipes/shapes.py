"""The built-in model's recipe: tokenizer, VAE (then its decoder on generic shapes), then UNet and text
encoder, trained from nothing on the shapes world and exported as a diffusers folder
(`lienzo train recipe shapes --out DIR`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from lienzo.devices import default_device
from lienzo.errors import InvalidArgumentError
from lienzo.io.checkpoints import staged_output
from lienzo.io.diffusers_folder import write_diffusers_folder
from lienzo.io.formats import read_state_dict, write_safetensors
from lienzo.io.model_files import ModelFiles, spec_with_configs
from lienzo.models.clip import CLIPTextConfig, CLIPTextModel
from lienzo.models.unet import UNetConfig, UNetModel
from lienzo.models.vae import AutoencoderKL, VAEConfig
from lienzo.pipelines.output import write_png_atomically
from lienzo.pipelines.pipeline import Pipeline, pipeline_from_files
from lienzo.recipes.shapes_data import LatentPool, RandomCrops, encode_pool
from lienzo.text.tokenizer import CLIPTokenizer
from lienzo.training import (
    LatentDiffusionObjective,
    OptimConfig,
    TrainConfig,
    VAEObjective,
    latent_scaling_factor,
    read_trained_tokenizer,
    train,
    train_clip_tokenizer,
)
from lienzo.training.loop import ensure_writable
from lienzo.worlds.codec_shapes import CodecDataConfig, CodecShapesDataset
from lienzo.worlds.dataset import ShapesDataConfig, ShapesDataset, caption_corpus
from lienzo.worlds.evaluate import CATEGORIES, contact_sheet, evaluate, evaluation_prompts

FAMILY = "sd1"
"""The built-in model is an SD 1.x-family model (CLIP-style text tower, eps prediction), only smaller."""
MODEL_FOLDER = "model"
POOL_FILE = "latent_pool.safetensors"


@dataclass(frozen=True)
class DiffusionPhase:
    """One stretch of the diffusion stage, started from the previous stretch's EMA weights and written
    to `out/<folder>/`; `two_object_share` and `caption_drop` (the size and position drop rate)
    change the data it draws, `None` keeps the pool's."""

    folder: str
    training: TrainConfig
    two_object_share: float | None = None
    caption_drop: float | None = None


def diffusion_phase_training(
    steps: int, learning_rate: float, *, warmup_steps: int, ema_decay: float, seed: int = 0
) -> TrainConfig:
    """A diffusion phase's training: batches of 64 latents, checkpoints every 250 steps, samples every 500."""
    return TrainConfig(
        steps=steps,
        batch_size=64,
        optim=OptimConfig(learning_rate=learning_rate, warmup_steps=warmup_steps),
        ema_decay=ema_decay,
        checkpoint_every=250,
        sample_every=500,
        log_every=10,
        seed=seed,
    )


@dataclass(frozen=True)
class ShapesRecipe:
    """Every choice that makes the built-in model; `miniature()` is the same recipe in seconds."""

    data: ShapesDataConfig = field(default_factory=ShapesDataConfig)
    tokenizer_captions: int = 20000
    tokenizer_vocab: int = 1024
    vae: VAEConfig = VAEConfig(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=1, norm_groups=8)
    vae_crop: int = 64
    vae_reconstruction: str = "mse"
    vae_training: TrainConfig = TrainConfig(
        steps=2400,
        batch_size=16,
        optim=OptimConfig(learning_rate=3e-4, warmup_steps=20),
        ema_decay=None,
        checkpoint_every=200,
        log_every=10,
    )
    decoder_training: TrainConfig = TrainConfig(
        steps=1200,
        batch_size=16,
        optim=OptimConfig(learning_rate=3e-4, warmup_steps=20),
        ema_decay=None,
        checkpoint_every=200,
        log_every=10,
    )
    decoder_generalisation: TrainConfig | None = None
    generic_share: float = 0.5
    """Share of generic-shape scenes in the optional decoder generalisation stage's data."""
    decoder_edge_weight: float = 0.0
    """Extra weight of pixels near edges in the decoder stage's L1 (VAEObjective's edge_weight); 0 in
    shapes-v1."""
    vae_generic_share: float = 0.0
    """Share of generic-shape scenes (never a star or heart) in the data of both VAE stages; 0 in
    shapes-v1, whose VAE saw the world's scenes only."""
    scale_images: int = 512
    latent_pool: int = 30000
    text_encoder: CLIPTextConfig = CLIPTextConfig(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4
    )
    unet: UNetConfig = UNetConfig(
        model_channels=64,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        transformer_depth=(0, 1, 1),
        transformer_depth_middle=1,
        num_head_channels=32,
        context_dim=128,
        use_linear_in_transformer=True,
        norm_groups=16,
    )
    diffusion: tuple[DiffusionPhase, ...] = (
        DiffusionPhase(
            "diffusion",
            diffusion_phase_training(3000, 1e-3, warmup_steps=200, ema_decay=0.999),
        ),
        DiffusionPhase(
            "cooldown",
            diffusion_phase_training(1500, 2e-4, warmup_steps=50, ema_decay=0.998, seed=1),
        ),
        DiffusionPhase(
            "binding",
            diffusion_phase_training(3000, 3e-4, warmup_steps=50, ema_decay=0.998, seed=2),
            two_object_share=0.75,
            caption_drop=0.15,
        ),
    )
    caption_dropout: float = 0.1
    offset_noise: float = 0.1
    min_snr_gamma: float | None = 5.0
    sample_prompts: int = 8

    @classmethod
    def miniature(cls) -> ShapesRecipe:
        """The whole recipe at toy sizes and a few steps: proves every stage runs, trains nothing useful."""
        quick = TrainConfig(steps=2, batch_size=2, ema_decay=None, checkpoint_every=1, sample_every=2)
        return cls(
            tokenizer_captions=200,
            tokenizer_vocab=600,
            vae=VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1),
            vae_crop=32,
            vae_training=quick,
            decoder_training=quick,
            scale_images=8,
            latent_pool=8,
            text_encoder=CLIPTextConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
            ),
            unet=UNetConfig(
                model_channels=32,
                channel_mult=(1, 2),
                num_res_blocks=1,
                transformer_depth=(0, 1),
                transformer_depth_middle=1,
                num_head_channels=16,
                context_dim=32,
                use_linear_in_transformer=True,
            ),
            diffusion=(
                DiffusionPhase("diffusion", quick),
                DiffusionPhase("binding", quick, two_object_share=0.75, caption_drop=0.15),
            ),
            sample_prompts=1,
        )

    def in_miniature(self) -> ShapesRecipe:
        """`miniature()` with this recipe's latent width, generic-shape share and decoder edge weight."""
        latent = self.miniature().with_codec_latent(self.vae.embed_dim, self.vae_generic_share)
        return replace(latent, decoder_edge_weight=self.decoder_edge_weight)

    def with_decoder_generalisation(self, steps: int, learning_rate: float = 2e-4) -> ShapesRecipe:
        """This recipe with the optional decoder generalisation stage: `steps` batches like the decoder
        tuning's, at `learning_rate` (bench/vae_codec.py measured these settings)."""
        optim = replace(self.decoder_training.optim, learning_rate=learning_rate)
        stage = replace(self.decoder_training, steps=steps, optim=optim)
        return replace(self, decoder_generalisation=stage)

    def with_codec_latent(self, latent_channels: int, generic_share: float = 0.5) -> ShapesRecipe:
        """This recipe with a `latent_channels`-wide latent whose VAE learns the world's scenes mixed with
        generic shapes (share `generic_share`) from the start."""
        vae = replace(self.vae, z_channels=latent_channels, embed_dim=latent_channels)
        unet = replace(self.unet, in_channels=latent_channels, out_channels=latent_channels)
        return replace(self, vae=vae, unet=unet, vae_generic_share=generic_share)


def shapes_v2() -> ShapesRecipe:
    """shapes-v1's recipe with a 16-channel latent, a VAE that learns generic shapes from the start (5 600
    MSE steps), a decoder stage of 4 000 edge-weighted L1 steps and a binding phase of 5 000 steps instead
    of 3 000 (the wider latent needs the longer one to bind two objects; docs/training.md, shapes-v2)."""
    v1 = ShapesRecipe()
    *first, binding = v1.diffusion
    longer = replace(binding, training=replace(binding.training, steps=5000))
    return replace(
        v1.with_codec_latent(16, 0.5),
        vae_training=replace(v1.vae_training, steps=5600),
        decoder_training=replace(v1.decoder_training, steps=4000),
        decoder_edge_weight=10.0,
        diffusion=(*first, longer),
    )


RECIPES: dict[str, ShapesRecipe] = {
    "shapes-v1": ShapesRecipe(),
    "shapes-v2": shapes_v2(),
}
"""The built-in models' recipes by model name. shapes-v2 widens the latent to 16 channels and teaches its
VAE generic shapes, so that a 24-pixel star survives the VAE and fine-tuning can teach it
(docs/training.md)."""


def export_files(
    recipe: ShapesRecipe,
    unet: UNetModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer_folder: Path,
) -> ModelFiles:
    """The trained modules as SD 1.x-family ModelFiles at the world's 128-pixel resolution."""
    spec = spec_with_configs(FAMILY, unet.config, vae.config, [text_encoder.config])
    spec = replace(spec, resolution=recipe.data.resolution)

    def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {key: value.detach().float().clone() for key, value in module.state_dict().items()}

    return ModelFiles(
        spec, weights(unet), weights(vae), [weights(text_encoder)], [tokenizer_folder], "lienzo"
    )


def sample_report(pipe: Pipeline, prompts_per_category: int, folder: Path, step: int) -> str:
    """Generate and score a few prompts per category; write their contact sheet; return the summary."""
    prompts = [p for kind in CATEGORIES for p in evaluation_prompts(prompts_per_category, 1, kind)]
    report = evaluate(
        lambda prompt, seed: pipe.generate(prompt, seed=seed, progress=False)[0],
        prompts,
        list(range(len(prompts))),
    )
    matches = [item.result.matched for item in report.items]
    sheet = contact_sheet(list(report.images), prompts, matches)
    folder.mkdir(parents=True, exist_ok=True)
    write_png_atomically(sheet, folder / f"step_{step:06d}.png")
    return ", ".join(f"{kind} {report.accuracy(kind):.0%}" for kind in CATEGORIES)


def train_tokenizer(recipe: ShapesRecipe, folder: Path) -> CLIPTokenizer:
    """Learn the world's BPE vocabulary (deterministic), written atomically as a CLIP tokenizer folder."""
    if folder.is_dir():
        return read_trained_tokenizer(folder)
    captions = caption_corpus(recipe.tokenizer_captions, seed=recipe.data.seed)
    with staged_output(folder) as staged:
        train_clip_tokenizer(captions, recipe.tokenizer_vocab, staged)
    return read_trained_tokenizer(folder)


def vae_crops(recipe: ShapesRecipe, offset: int) -> RandomCrops:
    """Random crops for a VAE stage (seed offset `offset`): of the world's scenes, or of the world's scenes
    mixed with generic shapes when the recipe's `vae_generic_share` is set."""
    seed = recipe.data.seed + offset
    if recipe.vae_generic_share:
        scenes = CodecShapesDataset(CodecDataConfig(recipe.data, recipe.vae_generic_share, seed=seed))
    else:
        scenes = ShapesDataset(recipe.data)
    return RandomCrops(scenes, recipe.vae_crop, seed=seed)


def train_vae(recipe: ShapesRecipe, folder: Path, device: torch.device, progress: bool) -> AutoencoderKL:
    """Stage 2: the autoencoder on random crops (reconstruction + small KL), resumable."""
    torch.manual_seed(recipe.vae_training.seed)
    vae = AutoencoderKL(recipe.vae).to(device)
    config = replace(recipe.vae_training, progress_bar=progress)
    crops = vae_crops(recipe, 0)
    objective = VAEObjective(vae, reconstruction=recipe.vae_reconstruction)
    train(config, objective, crops, folder, resume=True, device=device)
    return vae.eval().requires_grad_(False)


def tune_decoder(
    recipe: ShapesRecipe, vae: AutoencoderKL, folder: Path, device: torch.device, progress: bool
) -> AutoencoderKL:
    """Stage 2b: the decoder alone with L1 (sharper edges than MSE), the encoder and latents unchanged."""
    config = replace(recipe.decoder_training, progress_bar=progress)
    crops = vae_crops(recipe, 1)
    objective = VAEObjective(
        vae, reconstruction="l1", train_encoder=False, edge_weight=recipe.decoder_edge_weight
    )
    train(config, objective, crops, folder, resume=True, device=device)
    return vae.eval().requires_grad_(False)


def generalise_decoder(
    recipe: ShapesRecipe, vae: AutoencoderKL, folder: Path, device: torch.device, progress: bool
) -> AutoencoderKL:
    """Optional stage 2c (`decoder_generalisation`; off in shapes-v1): the decoder alone with L1 on generic
    procedural shapes (never a star or heart) mixed with the world's scenes, so it decodes shapes it was
    not trained on; encoder and latents unchanged. Measured in bench/vae_codec.py and docs/training.md."""
    if recipe.decoder_generalisation is None:
        return vae
    config = replace(recipe.decoder_generalisation, progress_bar=progress)
    seed = recipe.data.seed + 5  # apart from the crops of the VAE stages (seeds + 0 and + 1)
    data = CodecDataConfig(recipe.data, recipe.generic_share, seed=seed)
    crops = RandomCrops(CodecShapesDataset(data), recipe.vae_crop, seed=seed)
    objective = VAEObjective(vae, reconstruction="l1", train_encoder=False)
    train(config, objective, crops, folder, resume=True, device=device)
    return vae.eval().requires_grad_(False)


def with_latent_scale(recipe: ShapesRecipe, vae: AutoencoderKL) -> AutoencoderKL:
    """A VAE over the same weights whose config's scaling factor is 1 / std of its latents over the
    world's images (the trained one is left as it is)."""
    dataset = ShapesDataset(replace(recipe.data, seed=recipe.data.seed + 1))
    images = torch.stack([dataset[index]["image"] for index in range(recipe.scale_images)])
    config = replace(vae.config, scaling_factor=round(latent_scaling_factor(vae, images), 5))
    with torch.device("meta"):
        scaled = AutoencoderKL(config)
    scaled.load_state_dict(vae.state_dict(), assign=True)
    return scaled.eval().requires_grad_(False)


def latent_pool(recipe: ShapesRecipe, vae: AutoencoderKL, path: Path) -> torch.Tensor:
    """Stage 3: posterior moments of the pool's scenes, encoded once and kept beside the checkpoints."""
    if path.is_file():
        moments = read_state_dict(path)["moments"]
        if moments.shape[0] == recipe.latent_pool:
            return moments
    moments = encode_pool(vae, recipe.data, recipe.latent_pool)
    write_safetensors(path, {"moments": moments})
    return moments


def train_diffusion(
    recipe: ShapesRecipe,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    tokenizer_folder: Path,
    moments: torch.Tensor,
    out: Path,
    device: torch.device,
    progress: bool,
) -> tuple[UNetModel, CLIPTextModel]:
    """Stage 4: UNet and text encoder together on the latent pool, phase after phase (a main phase at a
    high learning rate, a cool-down, a phase that dwells on two-object scenes); returns the EMA weights."""
    torch.manual_seed(recipe.diffusion[0].training.seed)
    text_config = replace(recipe.text_encoder, vocab_size=len(tokenizer.vocab))
    text_encoder = CLIPTextModel(text_config).to(device)
    unet = UNetModel(recipe.unet).to(device)
    objective = LatentDiffusionObjective(
        unet,
        vae,
        text_encoder,
        tokenizer,
        latent_scale=vae.config.scaling_factor,
        train_text_encoder=True,
        caption_dropout=recipe.caption_dropout,
        encoded_inputs=True,
        offset_noise=recipe.offset_noise,
        min_snr_gamma=recipe.min_snr_gamma,
    )

    def sample_fn(step: int, samples: Path) -> None:
        pipe = pipeline_from_files(
            export_files(recipe, unet, vae, text_encoder, tokenizer_folder), device=device
        )
        summary = sample_report(pipe, recipe.sample_prompts, samples, step)
        print(f"step {step}: prompts matched: {summary}", flush=True)

    for phase in recipe.diffusion:
        data = recipe.data
        if phase.caption_drop is not None:
            data = replace(data, drop_size=phase.caption_drop, drop_position=phase.caption_drop)
        pool = LatentPool(moments, data, two_object_share=phase.two_object_share)
        config = replace(phase.training, progress_bar=progress)
        result = train(
            config, objective, pool, out / phase.folder, resume=True, device=device, sample_fn=sample_fn
        )
        if result.ema is not None:
            result.ema.copy_to(objective.trainable)
    return unet.eval(), text_encoder.eval()


def run_recipe(
    out: str | Path, recipe: ShapesRecipe | None = None, *, resume: bool = False, progress: bool = True
) -> Path:
    """Train the built-in model into `out` (stages resume where they stopped); returns the model folder."""
    recipe = recipe or ShapesRecipe()
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise InvalidArgumentError(
            f"{out} is not empty; continue the run there with --resume or pick a new --out"
        )
    ensure_writable(out)
    device = default_device()
    tokenizer_folder = out / "tokenizer"
    tokenizer = train_tokenizer(recipe, tokenizer_folder)
    vae = train_vae(recipe, out / "vae", device, progress)
    vae = tune_decoder(recipe, vae, out / "decoder", device, progress)
    vae = with_latent_scale(recipe, generalise_decoder(recipe, vae, out / "generalisation", device, progress))
    moments = latent_pool(recipe, vae, out / POOL_FILE)
    unet, text_encoder = train_diffusion(
        recipe, vae, tokenizer, tokenizer_folder, moments, out, device, progress
    )
    files = export_files(recipe, unet, vae, text_encoder, tokenizer_folder)
    target = out / MODEL_FOLDER
    with staged_output(target) as staged:
        write_diffusers_folder(files, staged, dtype=torch.float16)
    return target
