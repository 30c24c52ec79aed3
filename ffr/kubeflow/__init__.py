"""Kubeflow Pipelines for ffr: :mod:`ffr.kubeflow.components` (one thin component per step) and
:mod:`ffr.kubeflow.pipelines` (the pipelines built from them, and their launchers). The only place
besides :mod:`ffr.integrations` that imports ``kfp``; the rest of ``ffr`` never imports this
package, except the command line's pipeline commands (``ffr run / compile / submit / schedule /
upload``)."""
