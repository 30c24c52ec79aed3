"""The servable model: what ffr logs to MLflow and registers, an MLflow pyfunc that takes what a
caller has — images — and answers with the class.

Input (``/invocations`` of ``mlflow models serve``, or ``pyfunc.load_model(...).predict``): an
``image`` column of encoded images (PNG, JPEG, ...) as base64 text, in any form the MLflow scoring
server reads —

- ``{"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}``,
- ``{"dataframe_records": [{"image": "<base64>"}, ...]}``,
- ``{"instances": [{"image": "<base64>"}, ...]}``, ``{"inputs": {"image": ["<base64>", ...]}}``,
- CSV with an ``image`` header (``Content-Type: text/csv``);

in Python, the encoded bytes themselves, or a uint8 array ``(N, H, W, 3)`` of RGB pixels through
the unwrapped model (``pyfunc.load_model(uri).unwrap_python_model().predict(None, pixels)``). An
image that cannot be read is a 400 naming its row and the reason, without a stack trace.

Every image gets the model's own preprocessing (RGB, bilinear resize to the training resolution,
the training normalisation). Output: one row per image with ``class``, ``probabilities`` (an
object class → probability) and ``model_version`` (the registered version when served through
``ffr serve``, else the training stage's key).

The model is logged from code (MLflow's models-from-code, :mod:`ffr.integrations.serving_model`):
its directory holds that file, the ffr checkpoint (state dict + metadata, loaded with
``weights_only=True``) and the ``ffr`` package's source, and no pickled object — loading it runs
the code it ships, never a pickle. It loads wherever torch, torchvision and pillow are installed:
its requirements name those, pinned to the versions it was trained with.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import tempfile
from pathlib import Path

import warnings

import mlflow.pyfunc
import numpy as np

# MLflow asks every PythonModel for type hints on predict (its own input validation); this model
# declares its input with a signature instead, and checks each image itself.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")

MODEL_NAME = "model"
IMAGE_COLUMN = "image"
VERSION_ENV = "FFR_MODEL_VERSION"  # set by `ffr serve` to the registered version it serves


def _requirements() -> list[str]:
    """The serving environment: the training environment's torch, torchvision, pillow, numpy,
    pandas, PyYAML and mlflow, pinned."""
    from importlib import metadata

    out = []
    for dist in ("torch", "torchvision", "pillow", "numpy", "pandas", "pyyaml", "mlflow"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        out.append(f"{dist}=={version.split('+')[0]}")  # a local build tag (+cu130) is no index version
    return out


# How encoded images start (PNG, JPEG, GIF, WebP/RIFF, TIFF): bytes that do are the image itself.
_MAGIC = (b"\x89PNG", b"\xff\xd8", b"GIF8", b"RIFF", b"II*\x00", b"MM\x00*")


def _image_bytes(value) -> bytes:
    """Encoded image bytes from a table cell: the bytes themselves, or their base64 text — as text
    (``dataframe_split`` of a CSV) or as the bytes of that text (how the scoring server hands
    ``instances`` and ``inputs`` on)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        if raw.startswith(_MAGIC):
            return raw
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return raw  # not base64: the decoder says what is wrong with it
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("text that is not base64 of an encoded image") from None
    raise ValueError(f"expected encoded image bytes or their base64 text, got {type(value).__name__}")


def _bad_input(message: str) -> Exception:
    """A refusal the scoring server answers with 400 and this message (no stack trace)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The pyfunc: see the module docstring."""

    def load_context(self, context) -> None:
        from ffr.train.loop import load_checkpoint

        self.model, self.meta = load_checkpoint(context.artifacts["checkpoint"])
        self.model.eval()
        self.classes = list(self.meta["classes"])
        self.image_size = int(self.meta["image_size"])

    def pixels(self, model_input) -> np.ndarray:
        """The inputs as a uint8 ``(N, size, size, 3)`` array, each image decoded and resized."""
        from PIL.Image import DecompressionBombError

        from ffr.data.loading import decode_image

        import pandas as pd

        if isinstance(model_input, dict) and IMAGE_COLUMN in model_input:
            model_input = pd.DataFrame({IMAGE_COLUMN: list(np.atleast_1d(model_input[IMAGE_COLUMN]))})
        if isinstance(model_input, pd.DataFrame):
            if IMAGE_COLUMN not in model_input.columns:
                raise _bad_input(f"expected a column {IMAGE_COLUMN!r} of encoded images; got {list(model_input.columns)}")
            out = []
            for i, value in enumerate(model_input[IMAGE_COLUMN]):
                try:
                    data = _image_bytes(value)
                    if not data:
                        raise ValueError("empty")
                    out.append(decode_image(io.BytesIO(data), self.image_size))
                except (OSError, ValueError, SyntaxError, DecompressionBombError) as e:  # PIL: OSError; some: SyntaxError
                    from PIL import UnidentifiedImageError

                    reason = "not in an image format this server reads" if isinstance(e, UnidentifiedImageError) else e
                    raise _bad_input(f"image {i}: not a decodable image ({reason})") from None
            return np.stack(out) if out else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        arr = np.asarray(model_input)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise _bad_input(f"expected uint8 RGB images (N, H, W, 3), got an array of shape {arr.shape}")
        if arr.shape[1:3] != (self.image_size, self.image_size):
            from PIL import Image

            arr = np.stack([np.asarray(Image.fromarray(a.astype(np.uint8)).resize(
                (self.image_size, self.image_size), Image.BILINEAR)) for a in arr])
        return arr.astype(np.uint8)

    def predict(self, context, model_input, params=None):
        """One row per image: ``class``, ``probabilities`` (class → probability), ``model_version``."""
        import pandas as pd
        import torch

        from ffr.data.loading import BatchTransform

        x = torch.from_numpy(self.pixels(model_input)).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            probs = torch.softmax(self.model(BatchTransform(self.meta.get("normalize", "imagenet"))(x)), dim=1)
        version = os.environ.get(VERSION_ENV) or str(self.meta.get("stage_key", ""))
        rows = [{"class": self.classes[int(p.argmax())],
                 "probabilities": {c: round(float(v), 6) for c, v in zip(self.classes, p)},
                 "model_version": version} for p in probs]
        return pd.DataFrame(rows, columns=["class", "probabilities", "model_version"])


def example_png(size: int) -> bytes:
    """A small PNG to show callers the input format (the model's input example)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def log_servable(model, meta: dict, name: str = MODEL_NAME, tags: dict | None = None):
    """Log ``model`` (a classifier with its checkpoint metadata) to the active MLflow run as the
    servable pyfunc, from code (:mod:`ffr.integrations.serving_model`), with the logged model's
    ``tags`` (what it is, where it was logged from); returns MLflow's model info."""
    import pandas as pd
    from mlflow.models import infer_signature

    import ffr
    from ffr.train.loop import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "model.pt", model, meta)
        example = pd.DataFrame({IMAGE_COLUMN: [example_png(int(meta["image_size"]))]})
        runner = ImageClassifier()
        runner.model, runner.meta = model.eval(), meta
        runner.classes, runner.image_size = list(meta["classes"]), int(meta["image_size"])
        output = runner.predict(None, example)
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(Path(__file__).with_name("serving_model.py")), artifacts={"checkpoint": str(ckpt)},
            code_paths=[str(Path(ffr.__file__).parent)], pip_requirements=_requirements(),
            signature=infer_signature(example, output), input_example=example,
            metadata={"ffr": json.loads(json.dumps(meta, default=str))}, tags=tags)


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1) -> list[str]:
    """The ``mlflow models serve`` command line that serves ``model_uri`` from this environment."""
    import shutil
    import sys

    exe = Path(sys.executable).with_name("mlflow")
    mlflow_cli = str(exe) if exe.is_file() else (shutil.which("mlflow") or "mlflow")
    return [mlflow_cli, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", host, "-p", str(port),
            "--workers", str(workers)]


def resolve_version(tracking_uri: str, name: str, alias: str | None = "champion", version: str | None = None) -> str:
    """The registered version of ``name`` that ``alias`` (or ``version``) names; a clear error when
    there is none, naming the aliases the model has (``@challenger`` when no champion passed the
    gate yet)."""
    from mlflow import MlflowClient

    from ffr.integrations import ServiceError
    from ffr.paths import redact_uri

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        if version is not None:
            return str(client.get_model_version(name, str(version)).version)
        return str(client.get_model_version_by_alias(name, alias).version)
    except Exception as e:  # MlflowException, or the server not answering
        what = f"version {version}" if version is not None else f"alias @{alias}"
        try:
            aliases = dict(client.get_registered_model(name).aliases or {})
        except Exception:  # no such model, or no server
            aliases = None
        if aliases:
            hint = "; it has " + ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items())) + \
                   ": serve one with --alias NAME or --version N"
        elif aliases is not None:
            hint = "; it has no alias (no version passed the promotion gate yet): serve one with --version N"
        else:
            hint = f" ({str(e).splitlines()[0]})"
        raise ServiceError(f"registered model {name!r} has no {what} at {redact_uri(tracking_uri)}{hint}") from None


def curl_example(host: str, port: int, image: str = "photo.png") -> str:
    """A working ``curl`` command that posts ``image`` (base64, MLflow's ``inputs`` form) to a
    served model."""
    body = json.dumps({"inputs": {IMAGE_COLUMN: ["IMAGE"]}}).replace('"IMAGE"', f'"\'"$(base64 -w0 {image})"\'"')
    return f"curl -s -H 'Content-Type: application/json' http://{host}:{port}/invocations -d '{body}'"


def serve(tracking_uri: str, name: str, alias: str | None = "champion", version: str | None = None,
          host: str = "127.0.0.1", port: int = 5001, workers: int = 1) -> int:
    """Serve registered model ``name`` (``@alias``, or ``version``) over HTTP with ``mlflow models
    serve`` in this environment until interrupted or terminated (SIGINT and SIGTERM are passed on
    to the server, which ends with this process); answers carry the registered version. Returns
    the server's exit code."""
    import signal
    import subprocess
    import sys

    resolved = resolve_version(tracking_uri, name, alias, version)
    uri = f"models:/{name}/{resolved}"
    # mlflow starts its web server by name (uvicorn): this environment's scripts come first, even
    # when it is a virtual environment nobody activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **os.environ, "PATH": path,
           "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri, VERSION_ENV: f"{name}/{resolved}"}
    server = subprocess.Popen(serve_command(uri, host, port, workers), env=env, start_new_session=True)

    def forward(signum, _frame):
        try:
            os.killpg(server.pid, signum)  # the server and the workers it started
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return server.wait()
            except KeyboardInterrupt:  # a second Ctrl-C while waiting
                forward(signal.SIGINT, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.poll() is None:
            forward(signal.SIGTERM, None)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                forward(signal.SIGKILL, None)
