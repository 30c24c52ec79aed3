"""Synthesis: backends that render an image for any (class, bias) group on request."""

from ffr.synthesis.base import (  # noqa: F401
    SYNTHESIS_BACKENDS,
    ImageRequest,
    SynthesisBackend,
    create_backend,
    image_seed,
    plan_requests,
    synthesize,
)

# Built-in backends register themselves on import.
from ffr.synthesis import procedural  # noqa: E402,F401
