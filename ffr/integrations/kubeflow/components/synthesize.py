"""Component: render one (group, shard) work item of the synthetic pool."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def synthesize_shard(
    card: Input[Artifact],
    work: dict,
    shard: Output[Dataset],
    backend: str = "procedural",
    seed: int = 0,
    batch_size: int = 8,
    backend_options: dict = {},
    filters: List[str] = [],
    max_attempts: int = 10,
):
    """Render the synthetic images of one (group, shard) work item.

    Every image's seed derives from (``seed``, group, index, attempt), so shards and retries
    reproduce the same images.

    Args:
        card: The dataset card (``prepare_data``'s ``card``): classes, bias values, groups.
        work: One item of ``prepare_data``'s work list: ``{"label", "bias", "count", "shard",
            "num_shards"}``.
        backend: The synthesis backend: ``procedural`` (digits on procedural textures, CPU),
            ``diffusers`` (Stable Diffusion or another diffusers text-to-image model, GPU) or
            ``folder`` (images read from a folder per group or a manifest).
        seed: Base seed of every image's seed.
        batch_size: Images rendered together (a GPU memory knob; the images do not depend on it).
        backend_options: The backend's settings, e.g. ``{"model": "s3://bucket/sd15",
            "prompts": "spuco_animals", "steps": 25}`` (diffusers) or ``{"source": "DIR"}``
            (folder); an unknown key fails the step with a message naming it.
        filters: Image filters that reject an image, which is then re-rendered with the next
            attempt's seed: ``grayscale[:tolerance=3]``, ``clip:model=DIR[,min_score=20]``,
            ``harmful:scorers=URI`` (harmful-sample pruning; the ``harmful.json`` that
            ``ffr synthesize scorers`` writes, a path or ``s3://`` URI the pod reads).
        max_attempts: Attempts per image before the step fails.

    Returns:
        shard: This shard's images and manifest; its metadata names the backend and
            the group counts.
    """
    from ffr.steps import manifest_summary, synthesize_step, work_item

    run, _ = synthesize_step(card.path, out_dir=shard.path, backend=backend, seed=seed, batch_size=batch_size,
                             options=backend_options, filters=filters, max_attempts=max_attempts,
                             record_dir=shard.path, **work_item(work))
    shard.metadata.update({"backend": backend, **manifest_summary(run.manifest)})
