"""Print a project's dependencies with the given extras, one requirement per line, from its
pyproject.toml alone (no build, no code): the image installs them in a layer of their own, so a
code edit does not reinstall torch. Extras that name the project itself (``ffr[a,b]``) are
expanded. Standard library only: it runs in the bare base image.

Usage: python3 requirements.py pyproject.toml kubeflow,diffusion
"""

import re
import sys
import tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """The project's dependencies plus those of ``extras`` (each once, in order)."""
    project = pyproject["project"]
    name, optional = project["name"], project.get("optional-dependencies", {})
    out, seen = list(project.get("dependencies", [])), set()

    def add(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            sys.exit(f"requirements.py: error: {name} has no extra {extra!r} (known: {', '.join(sorted(optional))})")
        seen.add(extra)
        for req in optional[extra]:
            m = re.fullmatch(rf"{re.escape(name)}\[([\w,\s-]+)\]", req.strip())
            if m:
                for e in m[1].split(","):
                    add(e.strip())
            elif req not in out:
                out.append(req)

    for extra in extras:
        add(extra)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    with open(sys.argv[1], "rb") as f:
        data = tomllib.load(f)
    print("\n".join(requirements(data, [e for e in sys.argv[2].split(",") if e])))
