"""atarirep: learning and measuring state representations of Atari games (the AtariARI benchmark, today).

The names AtariARI users know are importable from here: AtariARIWrapper, get_episodes, ProbeTrainer.
"""

from atarirep.envs import AtariARIWrapper, LabelledAtariEnv

__all__ = ["AtariARIWrapper", "LabelledAtariEnv", "ProbeTrainer", "get_episodes"]


def __getattr__(name):  # torch-backed names load on first use, so `import atarirep` stays light
    if name in ("get_episodes", "ProbeTrainer"):
        from atarirep import compat

        return getattr(compat, name)
    raise AttributeError(f"module 'atarirep' has no attribute {name!r}")
