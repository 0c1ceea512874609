"""atarirep: learning and measuring state representations of Atari games (the AtariARI benchmark, today).

The names AtariARI users know are importable from here: AtariARIWrapper, get_episodes, ProbeTrainer.
"""

import importlib  # no `from __future__ import annotations`: it would bind `atarirep.annotations` to itself

# name -> the module that defines it, loaded on first use, so `import atarirep` needs neither ale-py nor torch
_LAZY = {
    "AtariARIWrapper": "atarirep.envs",
    "LabelledAtariEnv": "atarirep.envs",
    "ProbeTrainer": "atarirep.compat",
    "get_episodes": "atarirep.compat",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'atarirep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
