"""Adapters to external services — MLflow tracking and registry, DVC, S3 (boto3). The only place in
``ffr`` that imports mlflow, dvc or boto3; the core reaches them lazily, when a URI or a tracker asks."""


class ServiceError(RuntimeError):
    """An external service (S3, the MLflow server or registry) could not be used; the message says
    which and why. The CLI prints it without a traceback."""
