"""The servable model's code, as MLflow logs it (models-from-code): the file MLflow runs to build
the model when it loads it — no pickled object. :func:`ffr.integrations.serving.log_servable`
logs this file with the checkpoint as an artifact and the ``ffr`` package as code."""

import mlflow

from ffr.integrations.serving import ImageClassifier

mlflow.models.set_model(ImageClassifier())
