"""The governance score: how much a job is granted, as one number a policy can cap.

Each job gets an effect vector over five axes (risk, fairness, privacy, novelty, security), each
0..1, summed from what it is granted and clipped; its score is the vector's L2 norm (so it lies in
0..sqrt(5)). The weights below are the whole model, with each built-in tool's own effects from
``runner.catalog``: they are printed by ``sandrun catalog`` and documented in ``docs/policy.md``
and ``docs/catalog.md``, so a policy author can predict a score by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

__all__ = ["AXES", "GRANT_EFFECTS", "ACTION_EFFECTS", "Grants", "effect_vector", "score"]

AXES = ("risk", "fairness", "privacy", "novelty", "security")

#: Effects of what a job is granted, before gate actions.
GRANT_EFFECTS: dict[str, dict[str, float]] = {
    "ro_mount": {"privacy": 0.1},
    "rw_mount": {"risk": 0.3, "security": 0.1},
    "network": {"risk": 0.2, "privacy": 0.3, "security": 0.3},
    "env_var": {"privacy": 0.02},
    "unsigned": {"novelty": 0.2, "security": 0.2},
}

#: Effects of gate actions, matched as patterns; the built-in catalog of what actions mean.
ACTION_EFFECTS: dict[str, dict[str, float]] = {
    "tool.fs.read": {"privacy": 0.1},
    "tool.fs.write": {"risk": 0.1},
    "tool.net.*": {"privacy": 0.2, "security": 0.2},
    "tool.sys.*": {"security": 0.1},
    "tool.agent.*": {"risk": 0.4, "novelty": 0.4, "fairness": 0.2},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Grants:
    """The parts of a job that the score depends on."""

    ro_mounts: int
    rw_mounts: int
    network: bool
    env_vars: int
    signed: bool
    actions: tuple[str, ...]
    #: The tool's own effects (a built-in's, from the catalog), added as they are.
    tool_effects: tuple[tuple[str, float], ...] = ()


def _add(vector: dict[str, float], effects: dict[str, float], times: int = 1) -> None:
    for axis, weight in effects.items():
        vector[axis] += weight * times


def effect_vector(grants: Grants) -> dict[str, float]:
    vector = dict.fromkeys(AXES, 0.0)
    _add(vector, GRANT_EFFECTS["ro_mount"], grants.ro_mounts)
    _add(vector, GRANT_EFFECTS["rw_mount"], grants.rw_mounts)
    _add(vector, GRANT_EFFECTS["env_var"], grants.env_vars)
    if grants.network:
        _add(vector, GRANT_EFFECTS["network"])
    if not grants.signed:
        _add(vector, GRANT_EFFECTS["unsigned"])
    _add(vector, dict(grants.tool_effects))
    for action in grants.actions:
        for pattern, effects in ACTION_EFFECTS.items():
            if fnmatchcase(action, pattern):
                _add(vector, effects)
    return {axis: min(1.0, value) for axis, value in vector.items()}


def score(grants: Grants) -> float:
    """The L2 norm of the effect vector, rounded to 4 places so plans hash the same everywhere."""
    return round(math.sqrt(sum(v * v for v in effect_vector(grants).values())), 4)
