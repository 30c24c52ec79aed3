"""How pipeline steps are scheduled on a cluster: resource requests, accelerators, retries,
caching and the Kubernetes secrets that carry credentials. Chosen when a pipeline is built; the
local runner ignores resources and secrets, and local builds use no retries."""

from __future__ import annotations

import re

from dataclasses import dataclass, field

# Step kinds: every component belongs to one. CHECK (the run form's check) is never retried:
# a config error stays one.
CHECK, DATA, SYNTHESIS, TRAIN, EVALUATE, TRACK = "check", "data", "synthesis", "train", "evaluate", "track"


def _default_resources() -> dict[str, tuple[str, str]]:
    # (CPU, memory) requests per step kind; limits are set to the same values (a pod gets what it
    # asked for, so a step's speed does not depend on its neighbours).
    return {CHECK: ("500m", "2Gi"), DATA: ("1", "4Gi"), SYNTHESIS: ("2", "8Gi"), TRAIN: ("4", "16Gi"), EVALUATE: ("2", "8Gi"),
            TRACK: ("1", "4Gi")}


def _default_secrets() -> dict[str, dict[str, str]]:
    # Secret name -> {secret key: environment variable}. Optional: a pod starts when a secret is
    # absent, so a cluster without S3 or MLflow runs the pipeline as is.
    return {
        "ffr-s3": {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                  "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")},
        "ffr-mlflow": {k: k for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                                      "MLFLOW_TRACKING_PASSWORD")},
    }


@dataclass
class Platform:
    """Cluster settings of a built pipeline.

    ``gpu`` requests ``accelerator_limit`` accelerators of ``accelerator_type`` for the
    ``gpu_steps`` (synthesis and training by default), scheduled by ``node_selector``
    (``{label: value}``) and ``tolerations`` (``[{"key", "operator", "value", "effect"}]``, e.g. the
    taint of a GPU node pool) — GPU steps only. ``shm_size`` mounts a memory-backed volume of at
    most that size at /dev/shm in the training steps (torchrun's processes and data-loader workers
    share tensors through it; a pod's default is 64 MiB); empty: none. ``parallelism`` caps how
    many iterations of each fan-out (synthesis shards, baselines) run at once (0: no cap).
    ``retries`` (with exponential backoff from ``backoff``) apply to the ``retry_steps``;
    ``cached_steps`` may reuse earlier results. ``image``: the image every step runs in (see
    :func:`ffr.integrations.kubeflow.components.image.base_image`; empty: the project's default).
    """

    gpu: bool = False
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    resources: dict = field(default_factory=_default_resources)
    gpu_steps: tuple = (SYNTHESIS, TRAIN)
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)
    shm_size: str = "4Gi"
    parallelism: int = 0
    retries: int = 3
    backoff: str = "60s"
    backoff_factor: float = 2.0
    backoff_max: str = "3600s"
    retry_steps: tuple = (SYNTHESIS, TRAIN)
    cached_steps: tuple = (DATA, SYNTHESIS)  # never CHECK: its fingerprint of the data must be fresh
    secrets: dict = field(default_factory=_default_secrets)
    image: str = ""           # the component image (ffr.integrations.kubeflow.components.image.base_image); "": the default
    image_env: bool = True    # every step's $FFR_IMAGE names its image (lineage of runs and models)

    @classmethod
    def local(cls) -> "Platform":
        """For the local runner: no retries (a failure there is a bug or bad input, and retrying
        it only waits), no secrets, no volumes."""
        return cls(retries=0, secrets={}, image_env=False, shm_size="")

    def apply(self, task, kind: str, name: str | None = None):
        """Configure ``task`` (a step of kind ``kind``) and return it."""
        from kfp import kubernetes

        if name:
            task.set_display_name(name)
        cpu, memory = self.resources[kind]
        task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
        if self.gpu and kind in self.gpu_steps:
            task.set_accelerator_type(self.accelerator_type).set_accelerator_limit(self.accelerator_limit)
        if kind in self.gpu_steps:
            for label, value in self.node_selector.items():
                kubernetes.add_node_selector(task, label_key=label, label_value=value)
            for t in self.tolerations:
                kubernetes.add_toleration(task, key=t.get("key"), operator=t.get("operator", "Equal"),
                                          value=t.get("value"), effect=t.get("effect"))
        if self.shm_size and kind == TRAIN:
            kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                       size_limit=self.shm_size)
        if self.retries and kind in self.retry_steps:
            task.set_retry(self.retries, backoff_duration=self.backoff, backoff_factor=self.backoff_factor,
                           backoff_max_duration=self.backoff_max)
        task.set_caching_options(kind in self.cached_steps)
        from ffr.integrations.kubeflow.components.image import base_image

        image = base_image(self.image)
        if task.container_spec is not None:
            task.container_spec.image = image  # the image this pipeline is built for
        if self.image_env:
            task.set_env_variable("FFR_IMAGE", image)  # lineage: runs and models name their image
        for secret, keys in self.secrets.items():
            kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=dict(keys), optional=True)
        return task


_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Kubernetes label keys ([DNS-subdomain prefix/]name) and values, and resource quantities (4Gi, 512Mi).
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}")
_LABEL_VALUE = re.compile(_NAME)
_QUANTITY = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")


def parse_shm_size(text: str) -> str:
    """``--shm-size``: a Kubernetes quantity (``4Gi``, ``512Mi``), or ``""``/``0`` for none."""
    text = (text or "").strip()
    if text in ("", "0"):
        return ""
    if not _QUANTITY.fullmatch(text):
        raise ValueError(f"--shm-size {text!r}: expected a size such as 4Gi or 512Mi (0: no /dev/shm volume)")
    return text


def parse_toleration(text: str) -> dict:
    """``KEY[=VALUE][:EFFECT]`` (kubectl taint's notation) as a toleration: ``nvidia.com/gpu:NoSchedule``
    tolerates the taint whatever its value (operator Exists), ``pool=gpu:NoSchedule`` that value
    only (Equal). Empty effect: every effect."""
    rest, _, effect = text.rpartition(":") if ":" in text else (text, "", "")
    key, eq, value = rest.partition("=")
    if (not _LABEL_KEY.fullmatch(key) or (effect and effect not in _EFFECTS) or (eq and not value)
            or (value and not _LABEL_VALUE.fullmatch(value))):
        raise ValueError(f"--toleration {text!r}: expected KEY[=VALUE][:EFFECT] with EFFECT one of "
                         f"{', '.join(_EFFECTS)}, e.g. nvidia.com/gpu:NoSchedule")
    return {"key": key, "operator": "Equal" if eq else "Exists", "value": value or None, "effect": effect or None}


def parse_node_selector(items: list[str]) -> dict:
    """``LABEL=VALUE`` strings as a node selector."""
    out = {}
    for item in items:
        label, eq, value = item.partition("=")
        if not (_LABEL_KEY.fullmatch(label) and eq and _LABEL_VALUE.fullmatch(value)):
            raise ValueError(f"--node-selector {item!r}: expected LABEL=VALUE, e.g. nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3")
        out[label] = value
    return out
