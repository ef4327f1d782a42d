"""Resolving ``python:module:function`` references to the user's own code.

The dataset and model registries both accept such a reference; this module is the one place
that parses it and imports the target, so both report a bad reference the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from fedcomp.errors import FedcompError

PLUGIN_PREFIX = "python:"
PLUGIN_FORM = "python:MODULE:FUNCTION"


def is_plugin(name: str) -> bool:
    """Whether ``name`` is a ``python:module:function`` reference."""
    return name.startswith(PLUGIN_PREFIX)


def load_plugin(reference: str, error: type[FedcompError]) -> Callable[..., Any]:
    """Import the callable named by ``python:module:function``.

    ``module`` may be dotted (``pkg.sub``) and must be importable (on ``sys.path``, e.g.
    via ``PYTHONPATH``). Any failure raises ``error`` with one readable message.
    """
    module_name, sep, function_name = reference.removeprefix(PLUGIN_PREFIX).rpartition(":")
    if not (is_plugin(reference) and sep and module_name and function_name):
        raise error(f"{reference!r} is not a plugin reference; expected the form {PLUGIN_FORM}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(
            f"cannot import module {module_name!r} named in {reference!r}: {exc}. "
            "Make sure it is on sys.path (e.g. add its directory to PYTHONPATH)."
        ) from exc
    except Exception as exc:  # the user's module failed while executing
        raise error(
            f"importing module {module_name!r} named in {reference!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not hasattr(module, function_name):
        raise error(f"module {module_name!r} has no attribute {function_name!r} (from {reference!r})")
    target = getattr(module, function_name)
    if not callable(target):
        raise error(f"module {module_name!r} has a non-callable {function_name!r} (from {reference!r})")
    return target
