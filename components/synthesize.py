"""Component: render one (group, shard) work item of the synthetic pool."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import COMPONENT_OPTIONS


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
    """Render the synthetic images of one work item ``{"label", "bias", "count", "shard",
    "num_shards"}`` with the synthesis ``backend`` (``backend_options`` e.g. a model path);
    ``filters`` (e.g. ``grayscale``) reject images, which are then re-rendered with the next
    attempt's seed. Every image's seed derives from (``seed``, group, index, attempt), so shards
    and retries reproduce the same images."""
    from ffr.stages import manifest_summary, synthesize_stage

    m = synthesize_stage(card.path, work, shard.path, backend, seed, batch_size, backend_options, filters,
                         max_attempts)
    shard.metadata.update({"backend": backend, **manifest_summary(m)})
