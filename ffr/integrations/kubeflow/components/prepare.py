"""Component: load the real dataset, split it to a bias rate, plan the synthesis fan-out."""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def prepare_data(
    dataset: Output[Dataset],
    card: Output[Artifact],
    source: str = "demo",
    bias_rate: float = 0.95,
    seed: int = 0,
    min_val_per_group: int = 10,
    demo_per_digit: int = 0,
    demo_name: str = "digits",
    synthesis_for: List[str] = ["ffr"],
    num_shards: int = 2,
    source_data: Input[Dataset] = None,
    adapter: str = "csv",
    adapter_options: dict = {},
    source_digest: str = "",
) -> List[dict]:
    """Prepare the real data and plan the synthesis.

    Loads the real dataset, subsamples its train and val splits to ``bias_rate`` (the test split
    is kept whole), and plans the synthesis fan-out.

    Args:
        source: ``demo`` (the built-in benchmark, built inside the artifact) or a dataset folder
            every pod can read (an ``s3://`` URI too), read by ``adapter``.
        bias_rate: Fraction of each class's train and val images that carry the class's majority
            bias, between 0 and 1 exclusive (e.g. 0.95).
        seed: Seed of the bias-rate subsampling.
        min_val_per_group: Real validation images kept per minority group at least (checkpoint
            selection needs every group).
        demo_per_digit: ``demo`` and digits only: images of each digit to keep; 0 keeps the
            whole benchmark.
        demo_name: ``demo`` only: which built-in benchmark is built (``digits``: MNIST digits on
            textures; ``faces``: LFW photographs under a warm or cool cast; ``galaxies``: Hubble
            Deep Field sources in a red or blue band; docs/datasets.md).
        synthesis_for: The strategies whose synthetic budget the work list covers (the check
            step's ``synthesis_for``: the run's strategies that use synthetic images).
        num_shards: Shards each group's synthesis is split into (at most one per image).
        source_data: When given, the dataset instead of ``source`` (e.g. a data revision fetched
            by ``fetch_data_revision``).
        adapter: The dataset adapter reading ``source``: ``csv`` (manifest.csv + card.json),
            ``folder`` (``<split>/<class>/<bias>/`` image folders), or a public dataset as
            distributed: ``waterbirds``, ``celeba``, ``celeba_hq``, ``utkface``, ``spuco_animals``.
        adapter_options: The adapter's options, e.g. ``{"label": "Blond_Hair"}`` (celeba).
        source_digest: The content fingerprint of ``source`` (``check_config``'s output): not read
            here, it makes the step's cache key on the data, so a dataset rewritten under the
            same ``source`` is prepared again.

    Returns:
        Output: The synthesis work list: one ``{"label", "bias", "count", "shard",
            "num_shards"}`` item per (group, shard) with the images that group needs for
            ``synthesis_for``.
        dataset: The split dataset (manifest.csv, card.json, images); its metadata holds
            the bias rate, group counts, content digest and DVC version (``dvc_md5``).
        card: The dataset's card.json (classes, bias values, majority bias per class).
    """
    import os
    import shutil

    from ffr.data.builtin import run_form_options
    from ffr.integrations.dvc import dir_digest
    from ffr.steps import manifest_summary, prepare_step, synthesis_work

    if source_data is not None:
        source = source_data.path
    demo = run_form_options(demo_name, demo_per_digit) if source == "demo" else None  # read for the demo only
    split = prepare_step(source, dataset.path, bias_rate, seed, min_val_per_group, demo,
                    os.path.join(dataset.path, "images"), adapter, dict(adapter_options))
    shutil.copyfile(os.path.join(dataset.path, "card.json"), card.path)
    dataset.metadata.update({"bias_rate": bias_rate, **manifest_summary(split), "dvc_md5": dir_digest(dataset.path),
                             **({"source_digest": source_digest} if source_digest else {})})
    return synthesis_work(dataset.path, synthesis_for, num_shards)
