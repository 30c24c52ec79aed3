"""Kubeflow Pipelines for ffr: :mod:`ffr.integrations.kubeflow.components` (one thin component per
step) and :mod:`ffr.integrations.kubeflow.pipelines` (the pipelines built from them, and their
launchers). Here, with the other adapters, because it imports ``kfp`` (and, inside the components'
bodies, MLflow); the rest of ``ffr`` never imports this package, except the command line's pipeline
commands (``ffr run / compile / submit / schedule / upload``), lazily."""
