"""Component: load the real dataset, split it to a bias rate, plan the synthesis fan-out."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def prepare_data(
    dataset: Output[Dataset],
    card: Output[Artifact],
    source: str = "demo",
    bias_rate: float = 0.95,
    seed: int = 0,
    min_val_per_group: int = 10,
    demo_per_digit: int = 0,
    synthesis_for: List[str] = ["ffr"],
    num_shards: int = 2,
    source_data: Input[Dataset] = None,
    adapter: str = "csv",
    adapter_options: dict = {},
) -> List[dict]:
    """Prepare the real data and plan the synthesis.

    ``source`` is ``demo`` (the built-in benchmark, built inside the artifact; ``demo_per_digit`` > 0
    keeps that many images of each digit) or a dataset folder every pod can read, read by the
    dataset ``adapter`` with ``adapter_options`` (``csv``: manifest.csv + card.json, an ``s3://``
    URI too; ``folder``: ``<split>/<class>/<bias>/`` image folders; ``waterbirds``, ``celeba``,
    ``celeba_hq``, ``utkface``, ``spuco_animals``: the public datasets as distributed);
    ``source_data``, when given, is the dataset instead (e.g. a data revision fetched by
    ``fetch_data_revision``). Train and val are subsampled to
    ``bias_rate``. Outputs the split dataset (metadata: group counts, content digest, DVC version
    ``dvc_md5``), its card, and returns the synthesis work list: one item per (group, shard) with
    the images that group needs for the strategies ``synthesis_for``.
    """
    import os
    import shutil

    from ffr.integrations.dvc import dir_digest
    from ffr.data.sources import prepare
    from ffr.stages import manifest_summary, synthesis_work

    demo = {"per_digit": demo_per_digit} if demo_per_digit > 0 else None
    if source_data is not None:
        source = source_data.path
    split = prepare(source, dataset.path, bias_rate, seed, min_val_per_group, demo,
                    os.path.join(dataset.path, "images"), adapter, dict(adapter_options))
    shutil.copyfile(os.path.join(dataset.path, "card.json"), card.path)
    dataset.metadata.update({"bias_rate": bias_rate, **manifest_summary(split), "dvc_md5": dir_digest(dataset.path)})
    return synthesis_work(dataset.path, synthesis_for, num_shards)
