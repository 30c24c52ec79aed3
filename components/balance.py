"""Component: the training set(s) of a balancing strategy."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def balance_data(real: Input[Dataset], synthetic: Input[Dataset], training_sets: Output[Dataset],
                 strategy: str = "ffr"):
    """The training set of every stage of ``strategy`` (none, usb, asb: ``train``; ffr:
    ``pretrain`` on synthetic images only, ``finetune`` on real images only), one folder per
    stage with its images, and ``plan.json``."""
    from ffr.stages import balance_stage

    plan = balance_stage(strategy, real.path, synthetic.path, training_sets.path, self_contained=True)
    training_sets.metadata.update({"strategy": strategy, "synthetic_per_group": plan["synthetic_per_group"],
                                   "stages": {s["name"]: {"n": s["n"], "synthetic": s["synthetic"],
                                                          "groups": s["groups"]} for s in plan["stages"]}})
