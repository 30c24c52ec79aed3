"""ffr — From Fake to Real: pretrain on balanced synthetic images, fine-tune on real ones.

The core library: group-annotated manifests, bias-rate splits, synthesis backends, balancing
strategies, training objectives and the group evaluator. It imports no orchestration package
(kfp, mlflow, dvc); those adapters live in ``ffr.integrations`` (the Kubeflow components and
pipelines in ``ffr.integrations.kubeflow``).
"""

__version__ = "0.1.0"
