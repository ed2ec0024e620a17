"""Discovery of the optional packages that extend secure-ffm (``defenses``, ``attacks``, ``eval``).

``secure_ffm`` never imports those packages by name (dependencies point one way); they
declare themselves as ``secure_ffm.plugins`` entry points in ``pyproject.toml`` and register
their update transforms and CLI commands when loaded, as pytest and Flower plugins do.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

log = logging.getLogger(__name__)

GROUP = "secure_ffm.plugins"
"""Packages that register update transforms (loaded when a transform is looked up)."""
COMMANDS_GROUP = "secure_ffm.commands"
"""Modules that register CLI commands (loaded when the command line is parsed); they import nothing heavy at load."""
_loaded: set[str] = set()


def load_plugins(group: str = GROUP) -> tuple[str, ...]:
    """Import every installed entry point of ``group`` once; returns the module names loaded so far."""
    for entry in entry_points(group=group):
        if entry.value in _loaded:
            continue
        try:
            importlib.import_module(entry.value)
        except ImportError as error:  # a broken optional plugin must not break training
            log.warning("secure-ffm plugin %s (%s) failed to load: %s", entry.name, entry.value, error)
            continue
        _loaded.add(entry.value)
    return tuple(sorted(_loaded))
