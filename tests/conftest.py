"""Tiny random Stable Diffusion pipelines (SD 1.x architecture, as diffusers' own tests build them).

They are built once per test session, saved with `save_pretrained` (safetensors), and loaded back
through `redraft.load(folder)`: the same loading path a user of SD 1.5 takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def build_tiny_pipeline(prediction_type: str = "epsilon", seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(FIXTURES / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
    # A random UNet is far rougher than a trained one (its output jumps with tiny changes of its input,
    # which DDIM inversion's approximation cannot follow): a smaller output layer makes it smoother.
    # And it barely listens to the text: stronger cross-attention outputs make guidance matter.
    with torch.no_grad():
        smooth = 0.1 if prediction_type == "epsilon" else 0.2
        unet.conv_out.weight.mul_(smooth)
        unet.conv_out.bias.mul_(smooth)
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.mul_(4.0)
        # Unit-variance latents, as SD's 0.18215 gives for its VAE (pixel noise keeps it generic).
        x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        vae.register_to_config(scaling_factor=1.0 / vae.encode(x).latent_dist.mean.std().item())
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sd") / "epsilon"
    build_tiny_pipeline("epsilon").save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_v_folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sd") / "v"
    build_tiny_pipeline("v_prediction", seed=1).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def editor(tiny_folder):
    import redraft

    return redraft.load(str(tiny_folder), device="cpu")


@pytest.fixture(scope="session")
def v_editor(tiny_v_folder):
    import redraft

    return redraft.load(str(tiny_v_folder), device="cpu")


@pytest.fixture(params=["epsilon", "v_prediction"])
def any_editor(request, editor, v_editor):
    return editor if request.param == "epsilon" else v_editor


@pytest.fixture
def image():
    """A 16 x 16 picture with structure (a gradient and a square), as a PIL image."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:16, 0:16]
    a = np.stack([x * 15, y * 15, np.full_like(x, 90)], -1).astype(np.uint8)
    a[4:10, 5:11] = (230, 40, 40)
    return Image.fromarray(a)


# ---------------------------------------------------------------- tiny random weights of the learned metrics

@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory) -> Path:
    """A random CLIPModel (32 px images, the fixture tokenizer) and its processor, saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(FIXTURES / "tokenizer")
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16))
    path = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(path, safe_serialization=True)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


def build_tiny_dino(path: Path, kind: str = "vit") -> Path:
    """A random ViT (DINO's architecture) or DINOv2 model, patch 8, saved with save_pretrained."""
    from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTModel

    torch.manual_seed(0)
    shape = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    model = ViTModel(ViTConfig(intermediate_size=37, **shape)) if kind == "vit" \
        else Dinov2Model(Dinov2Config(mlp_ratio=1, **shape))
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_dino_folder(tmp_path_factory) -> Path:
    return build_tiny_dino(tmp_path_factory.mktemp("tiny-dino"))


def build_tiny_lpips(path: Path, net: str = "alex", seed: int = 0) -> Path:
    """Random LPIPS weights (non-negative per-channel weights, as trained ones are) in one safetensors file."""
    from safetensors.torch import save_file

    from redraft.eval.metrics import Lpips

    torch.manual_seed(seed)
    model = Lpips(net)
    tensors = {k: (v.abs() if k.startswith("lin") else v).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))
    return path


# ---------------------------------------------------------------- tiny random SDXL pipelines

def build_tiny_sdxl(seed: int = 0, tokenizer_2=None):
    """A tiny random StableDiffusionXLPipeline in SDXL's layout (as diffusers' SDXL tests build it): no
    attention at the highest resolution, transformer blocks of several layers, two text encoders (the
    second with a projection: the pooled embedding), `text_time` conditioning from the time ids."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(FIXTURES / "tokenizer")
    tokenizer_2 = tokenizer_2 or CLIPTokenizer.from_pretrained(FIXTURES / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2), attention_head_dim=(2, 4, 4), use_linear_projection=True,
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32,
        force_upcast=True,
    )
    config = dict(vocab_size=max(len(tokenizer), len(tokenizer_2)), hidden_size=32, intermediate_size=37,
                  num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    text_encoder, text_encoder_2 = CLIPTextModel(CLIPTextConfig(**config)), CLIPTextModelWithProjection(CLIPTextConfig(**config))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    with torch.no_grad():  # smoother and more text-dependent than raw random weights (as build_tiny_pipeline)
        unet.conv_out.weight.mul_(0.1)
        unet.conv_out.bias.mul_(0.1)
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.to_out[0].weight.mul_(4.0)
        x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        vae.register_to_config(scaling_factor=1.0 / vae.encode(x).latent_dist.mean.std().item())
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)


@pytest.fixture(scope="session")
def tiny_xl_folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sdxl") / "xl"
    build_tiny_sdxl().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def xl_editor(tiny_xl_folder):
    import redraft

    return redraft.load(str(tiny_xl_folder), device="cpu")


@pytest.fixture(scope="module")
def reference_builtin():
    """The built-in shapes model with P2P's defaults (`p2p.recipe.REFERENCE`) in place of its editing
    recipe: baselines against P2P's defaults, and UNet pass counts of the methods alone."""
    import redraft
    from redraft.p2p.recipe import REFERENCE

    editor = redraft.load(device="cpu")
    editor.recipe = REFERENCE
    return editor
