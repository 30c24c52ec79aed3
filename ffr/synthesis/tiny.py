"""Tiny random-weight models, built locally, for tests, benchmarks and offline smoke runs.

:func:`build_tiny_pipeline` saves a complete Stable Diffusion pipeline (UNet, VAE, CLIP text encoder,
tokenizer, scheduler) of a few hundred kilobytes: it runs the real ``diffusers`` generation path on a
CPU in well under a second per image, so everything around a real model — loading from a directory,
schedulers, seeds, batching, filters, resumption — is exercised without downloading weights. Its
images are coloured noise, not pictures. :func:`build_tiny_clip` does the same for the CLIP filter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _byte_chars() -> list[str]:
    """The 256 characters byte-level BPE uses for the bytes 0–255: printable Latin-1 bytes stand for
    themselves, the others are shifted past 255 (the GPT-2 / CLIP convention)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


def tiny_tokenizer():
    """A CLIPTokenizer loaded from a byte-level ``vocab.json`` and an empty ``merges.txt`` (every
    byte, alone and word-final, plus CLIP's special tokens: any text tokenizes, one token per byte);
    ``model_max_length`` 77, like CLIP's."""
    import tempfile

    from transformers import CLIPTokenizer

    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        (Path(d) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(d, model_max_length=77, local_files_only=True)


def build_tiny_pipeline(out_dir: str | os.PathLike, seed: int = 0, sample_size: int = 32) -> Path:
    """Save a tiny random ``StableDiffusionPipeline`` (DPM-Solver++ scheduler, no safety checker) to
    ``out_dir`` and return it. Images are ``2 × sample_size`` pixels by default (the VAE halves)."""
    import torch
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=sample_size,
                                in_channels=4, out_channels=4, cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=32)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=32))
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            algorithm_type="dpmsolver++", steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out_dir)
    return out_dir


def build_tiny_clip(out_dir: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    """Save a tiny random ``CLIPModel`` + ``CLIPProcessor`` to ``out_dir`` (for the CLIP filter)."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                              CLIPVisionConfig)

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                                crop_size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
