"""The ``diffusers`` synthesis backend: any text-to-image pipeline ``diffusers`` loads.

The model is a hub id (``CompVis/stable-diffusion-v1-4``), a local directory (``save_pretrained``
output), or an ``s3://`` URI downloaded once into a local cache. fp16 on CUDA, fp32 on CPU. The
scheduler is chosen by name (DPM-Solver++ with 25 steps by default; the paper used 50 PNDM steps);
classifier-free guidance scale, negative prompts, size and attention slicing are options. Each image
gets its own ``torch.Generator`` seeded with its request's seed, so a batch of N images equals N
batches of one and images do not depend on which batch or shard rendered them.
"""

from __future__ import annotations

from pathlib import Path

from ffr.data.manifest import DatasetCard
from ffr.paths import fetch_s3_prefix
from ffr.synthesis.generation import REJECT_INFO, SYNTHESIS_BACKENDS, ImageRequest
from ffr.synthesis.fingerprint import fingerprint_dir
from ffr.synthesis.prompts import PromptSet

# Short names → (diffusers scheduler class, options). Any other diffusers scheduler class name works too.
SCHEDULERS = {
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # PLMS, as Stable Diffusion ships it (the paper's)
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}
def make_scheduler(name: str, config):
    """The scheduler called ``name`` (a key of :data:`SCHEDULERS` or a diffusers class name) built
    from a pipeline's scheduler config."""
    import diffusers

    cls_name, extra = SCHEDULERS.get(name, (name, {}))
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not cls_name.endswith("Scheduler"):
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}, 'model' (the model's own) "
                         "or any diffusers scheduler class name")
    return cls.from_config(config, **extra)


@SYNTHESIS_BACKENDS.register("diffusers")
class DiffusersBackend:
    """Stable Diffusion (or any diffusers text-to-image pipeline) with a prompt set.

    ``model``: hub id, local directory or ``s3://`` URI. ``prompts``: a :class:`PromptSet`, a
    prompt file or a shipped set's name, validated against ``card``. ``scheduler``: a name from
    :data:`SCHEDULERS`, a diffusers class name, or ``"model"`` for the model's own. ``negative_prompt``
    overrides the prompt set's. ``height``/``width`` default to the model's native size.
    ``attention_slicing`` trades speed for memory (torch's scaled-dot-product attention, diffusers'
    default, is already memory-efficient). Hub models are read from the local Hugging Face cache
    only when ``local_files_only``; local directories and S3 copies never touch the network.
    """

    def __init__(self, card: DatasetCard, model: str, prompts, revision: str | None = None,
                 scheduler: str = "dpm++", steps: int = 25, guidance_scale: float = 7.5,
                 negative_prompt: str | None = None, height: int | None = None, width: int | None = None,
                 device: str = "auto", dtype: str = "auto", attention_slicing: bool = False,
                 cache_dir: str | None = None, local_files_only: bool = False, pipeline: str | None = None,
                 **opts):
        if opts:
            raise TypeError(f"unknown option(s) for the diffusers backend: {sorted(opts)}")
        import diffusers
        import torch

        from ffr.train.runtime import resolve_device

        self.prompts = prompts if isinstance(prompts, PromptSet) else PromptSet.load(prompts)
        self.prompts.validate(card)
        self.card = card
        self.device = resolve_device(device)
        torch_dtype = {"auto": torch.float16 if self.device.type == "cuda" else torch.float32,
                       "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
                       "float32": torch.float32, "fp32": torch.float32}.get(str(dtype))
        if torch_dtype is None:
            raise ValueError(f"unknown dtype {dtype!r}; use auto, float16, bfloat16 or float32")

        model = str(model)
        # Newer diffusers name the argument ``dtype`` and deprecate ``torch_dtype``; older ones know only the latter.
        from diffusers.utils import deprecation_utils
        kwargs: dict = {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": torch_dtype}
        if model.startswith("s3://"):
            path, model_id = fetch_s3_prefix(model, cache_dir), model
        elif Path(model).is_dir():
            path, model_id = Path(model), Path(model).resolve().name
        else:
            path, model_id = model, model
            kwargs.update(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
        if isinstance(path, Path):
            kwargs["local_files_only"] = True
        cls = getattr(diffusers, pipeline) if pipeline else diffusers.AutoPipelineForText2Image
        pipe = cls.from_pretrained(path, **kwargs)
        if isinstance(path, Path):
            rev = fingerprint_dir(path)
        else:  # a hub snapshot: its folder is named after the commit
            snapshot = Path(str(getattr(pipe, "name_or_path", "") or pipe.config.get("_name_or_path", "")))
            rev = snapshot.name if snapshot.parent.name == "snapshots" else (revision or "main")
        if scheduler != "model":
            pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
        if attention_slicing:
            pipe.enable_attention_slicing()
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self.model_id, self.revision = model_id, rev
        self.generator = f"diffusers:{model_id}@{rev}"
        scale = getattr(pipe, "vae_scale_factor", None)
        native = getattr(getattr(pipe, "unet", None), "config", {}).get("sample_size") if scale else None
        self.height = int(height or (native * scale if native else 0)) or None
        self.width = int(width or (native * scale if native else 0)) or None
        self.steps, self.guidance_scale, self.negative = int(steps), float(guidance_scale), negative_prompt
        self.settings = {"pipeline": type(pipe).__name__, "scheduler": scheduler, "steps": self.steps,
                         "guidance_scale": self.guidance_scale, "height": self.height, "width": self.width,
                         "dtype": str(torch_dtype).replace("torch.", ""), "negative_prompt": negative_prompt,
                         "prompts": self.prompts.name}
        self._torch = torch

    def prompt_for(self, request: ImageRequest) -> str:
        """The prompt set's prompt for the request's group and seed."""
        return self.prompts.prompt(request.label, request.bias, request.seed)

    def generate(self, requests: list[ImageRequest]):
        """One image per request, in one pipeline call, each from its own seeded CPU generator
        (the same initial noise on any device). Images the model's safety checker blanked are
        marked rejected."""
        if not requests:
            return []
        negatives = [self.negative if self.negative is not None else self.prompts.negative_prompt(r.label, r.bias)
                     for r in requests]
        out = self.pipe(prompt=[r.prompt for r in requests],
                        negative_prompt=[n or "" for n in negatives] if any(negatives) else None,
                        num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                        height=self.height, width=self.width, output_type="pil",
                        generator=[self._torch.Generator("cpu").manual_seed(r.seed) for r in requests])
        images = list(out.images)
        for img, flagged in zip(images, getattr(out, "nsfw_content_detected", None) or [False] * len(images)):
            if flagged:
                img.info[REJECT_INFO] = "nsfw: blanked by the model's safety checker"
        return images
