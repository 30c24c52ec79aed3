"""Adapters to external services — object storage (S3 through s3fs), MLflow tracking and registry,
DVC, Kubeflow Pipelines (:mod:`ffr.integrations.kubeflow`): the only place in ``ffr`` that imports
them. The core reaches them lazily, when a URI or a
tracker asks."""


class ServiceError(RuntimeError):
    """An external service (S3, the MLflow server or registry) could not be used; the message says
    which and why. The CLI prints it without a traceback."""
