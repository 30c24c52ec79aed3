"""The container image the components run in: the project's image tagged with ``ffr.__version__``.

``FFR_IMAGE`` overrides it when a pipeline is defined (compiled, submitted): a repository
(``registry.example.com/team/ffr`` → ``…/ffr:<version>``) or a full reference with a tag or digest
(``…/ffr:0.1.0-cuda``), used as given. See docs/kubeflow.md.
"""

import os

from ffr import __version__  # ffr/__init__.py imports nothing: this stays light

DEFAULT_REPOSITORY = "ghcr.io/ffr-project/ffr"


def base_image() -> str:
    """The image reference components are compiled with."""
    ref = os.environ.get("FFR_IMAGE", "").strip() or DEFAULT_REPOSITORY
    name = ref.rsplit("/", 1)[-1]
    return ref if (":" in name or "@" in name) else f"{ref}:{__version__}"


# Every component: the project's image, nothing installed at start-up (the image has ffr and
# kfp baked in; the local runner must not pip-install into the caller's environment).
COMPONENT_OPTIONS = {"base_image": base_image(), "packages_to_install": [], "install_kfp_package": False}
