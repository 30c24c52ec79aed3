"""Synthesis: backends that render an image for any (class, bias) group on request, prompt sets,
filters, and the resumable, shardable generation loop."""

from ffr.synthesis.generation import (  # noqa: F401
    SYNTHESIS_BACKENDS,
    ImageRequest,
    SynthesisBackend,
    SynthesisError,
    SynthesisRun,
    create_backend,
    image_seed,
    plan_requests,
    run_synthesis,
)

# Built-in backends register themselves on import (diffusers itself is imported only when used).
from ffr.synthesis import diffusers_backend, folder, procedural  # noqa: E402,F401
# ... and so do the filters that need more than the image (the harmful-sample scorers).
from ffr.synthesis import harmful  # noqa: E402,F401
