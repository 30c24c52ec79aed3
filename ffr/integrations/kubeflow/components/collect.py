"""Component: gather the synthesized shards into one synthetic pool."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


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
    from ffr.steps import collect_step, manifest_summary

    m = collect_step([s.path for s in shards], pool.path, card.path)
    pool.metadata.update({"shards": len(shards), **manifest_summary(m), "dvc_md5": dir_digest(pool.path)})
