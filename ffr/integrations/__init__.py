"""Adapters to external services (object storage, tracking, orchestration): the only place they are imported."""
