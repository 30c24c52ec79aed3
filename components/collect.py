"""Component: gather the synthesized shards into one synthetic pool."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def collect_shards(card: Input[Artifact], shards: Input[List[Dataset]], pool: Output[Dataset]):
    """One synthetic pool (images + manifest) from every shard of the synthesis fan-out.

    Args:
        card: The dataset card (``prepare_data``'s ``card``): the groups the pool must cover.
        shards: Every ``synthesize_shard`` output of the fan-out.

    Returns:
        pool: The validated synthetic pool; its metadata holds the shard count, group
            counts and its DVC version (``dvc_md5``).
    """
    from ffr.integrations.dvc import dir_digest
    from ffr.stages import collect_stage, manifest_summary

    m = collect_stage([s.path for s in shards], card.path, pool.path)
    pool.metadata.update({"shards": len(shards), **manifest_summary(m), "dvc_md5": dir_digest(pool.path)})
