"""The container image the components run in: the project's image, tagged
``<version>-<git revision>`` (:func:`ffr.revision.image_tag`), the tag `make image` builds.

A pipeline is built for one image (:class:`ffr.integrations.kubeflow.pipelines.platform.Platform`'s ``image``,
``ffr compile --image``): a repository (``registry.example.com/team/ffr`` →
``…/ffr:<version>-<revision>``, pinned to the pushed digest when `make push` recorded one in
``build/pushed-images.json``) or a full reference with a tag or digest (``…/ffr:0.1.0-cuda``),
used as given. See docs/kubeflow.md.
"""

import re

from ffr.revision import image_tag, pushed_digest  # light: the standard library and ffr/__init__

DEFAULT_REPOSITORY = "ghcr.io/ffr-project/ffr"


# An OCI image reference (the distribution spec's grammar, slightly simplified): an optional
# registry host[:port], a lower-case path, an optional tag, an optional sha256 digest.
_IMAGE_REF = re.compile(r"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                        r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                        r"(?:@sha256:[0-9a-f]{64})?")


def base_image(ref: str | None = None) -> str:
    """The image reference ``ref`` names (default: the project's repository), tagged and pinned
    as described above."""
    ref = (ref or "").strip() or DEFAULT_REPOSITORY
    if not _IMAGE_REF.fullmatch(ref):
        raise ValueError(f"--image {ref!r}: not an image reference (expected [registry[:port]/]repository[:tag]"
                         "[@sha256:digest], lower-case path, no spaces), e.g. ghcr.io/ffr-project/ffr:0.9.0")
    name = ref.rsplit("/", 1)[-1]
    if ":" in name or "@" in name:
        return ref
    tagged = f"{ref}:{image_tag()}"
    digest = pushed_digest(tagged)
    return f"{tagged}@{digest}" if digest else tagged


# Every component: the project's image (a pipeline build sets its own on each task), nothing
# installed at start-up (the image has ffr and kfp baked in; the local runner must not pip-install
# into the caller's environment).
COMPONENT_OPTIONS = {"base_image": base_image(), "packages_to_install": [], "install_kfp_package": False}
