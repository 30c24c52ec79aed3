"""Component: the training set(s) of a balancing strategy."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def balance_data(real: Input[Dataset], synthetic: Input[Dataset], training_sets: Output[Dataset],
                 strategy: str = "ffr"):
    """The training set of every stage of a balancing strategy.

    One folder per stage with its images, and ``plan.json``; every strategy spends the same
    synthetic budget.

    Args:
        real: The prepared real dataset (``prepare_data``'s ``dataset``).
        synthetic: The synthetic pool (``collect_shards``' ``pool``).
        strategy: ``none`` (real only), ``usb`` (every group filled with synthetic images up to
            the largest real group), ``asb`` (the same synthetic budget added evenly to every
            group) — each a single ``train`` stage — or ``ffr``: ``pretrain`` on synthetic images
            only, then ``finetune`` on real images only.

    Returns:
        training_sets: One folder per stage of ``strategy``, and ``plan.json``; its
            metadata holds the strategy and each stage's size and group counts.
    """
    from ffr.steps import balance_step

    plan = balance_step(strategy, real.path, synthetic.path, training_sets.path, self_contained=True)
    training_sets.metadata.update({"strategy": strategy, "synthetic_per_group": plan["synthetic_per_group"],
                                   "stages": {s["name"]: {"n": s["n"], "synthetic": s["synthetic"],
                                                          "groups": s["groups"]} for s in plan["stages"]}})
