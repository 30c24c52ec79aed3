"""Adapters to external services — MLflow tracking and registry, DVC, S3 (boto3). The only place in
``ffr`` that imports mlflow, dvc or boto3; the core reaches them lazily, when a URI or a tracker asks."""
