"""Plug-ins: one small registry type, used for every pluggable family — dataset adapters, built-in
benchmarks, synthesis backends, image filters, balancing strategies, objectives, backbones and
pipelines (docs/architecture.md lists where each lives) — and the loading of modules that add to
them. Not the MLflow model registry: that is :mod:`ffr.integrations.model_registry`.

A module of yours registers a new strategy, objective or backbone with the registry's decorator.
Name it in ``$FFR_PLUGINS`` (comma-separated module names) or as an entry point of the group
``ffr.plugins`` of an installed package: every registry loads those modules before its first
lookup, in every process — the command line, a grid's workers, each Kubeflow step's pod (give the
image the package, or the pods the variable).
"""

from __future__ import annotations

import importlib
import os
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
PLUGINS_ENV = "FFR_PLUGINS"
ENTRY_POINT_GROUP = "ffr.plugins"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import the plug-in modules (``$FFR_PLUGINS``, then the ``ffr.plugins`` entry points) not
    imported yet; returns the names imported now. A module that fails to import is an error
    naming it."""
    from importlib.metadata import entry_points

    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    names += [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    done = []
    for name in names:
        if name in _loaded:
            continue
        _loaded.add(name)  # before the import: a plug-in that looks a name up must not load itself again
        try:
            importlib.import_module(name)
        except ImportError as e:
            _loaded.discard(name)
            raise ImportError(f"ffr plug-in {name!r} ({PLUGINS_ENV} or the {ENTRY_POINT_GROUP!r} entry points) "
                              f"cannot be imported: {e}") from e
        done.append(name)
    return done


class Registry(Generic[T]):
    """A name → object mapping filled by a decorator.

    >>> backbones = Registry("backbone")
    >>> @backbones.register("tiny")
    ... def tiny(): ...
    >>> backbones.get("tiny") is tiny
    True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name`` (names are unique)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The object registered as ``name``; a KeyError lists the known names otherwise."""
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        load_plugins()
        return sorted(self._items)

    def problems(self, name: str, field: str) -> list:
        """``[]`` when ``name`` is registered, else the one :class:`~ffr.rules.Problem` naming
        ``field``, the unknown name and the known ones."""
        from ffr.rules import Problem

        return [] if name in self else [Problem(field, f"unknown {self.kind} {name!r}; known: "
                                                       f"{', '.join(self.names()) or '(none)'}")]

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs, sorted by name."""
        return [(n, self._items[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
