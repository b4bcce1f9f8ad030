"""Weighted routing of one model to several server versions (a canary beside the stable server).

`--upstream MODEL=URL[@WEIGHT[:VERSION]]` may name a model more than once, each time with a weight (0-100) and
a version name; a model's weights sum to 100 and its version names are distinct. A model named once is version
`stable` with weight 100 (the flag as it always was). Each request picks a version at random by weight; the
choice is per request (no stickiness), so a client's retries may land on either version.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

STABLE = "stable"
VERSION_HEADER = "x-inferforge-model-version"
_SUFFIX = re.compile(r"^(\d{1,3})(?::([a-z0-9][a-z0-9-]{0,30}))?$")


@dataclass(frozen=True)
class UpstreamSpec:
    """One `--upstream` flag: a model's server at a URL, its version name and traffic weight."""

    model: str
    url: str
    weight: int = 100
    version: str = STABLE
    weighted: bool = False  # the flag gave a weight (a model named twice must give one each time)


def split_weight(url: str) -> tuple[str, int, str, bool] | None:
    """(url, weight, version, weighted) of `URL[@WEIGHT[:VERSION]]`; None when the suffix is malformed."""
    base, sep, suffix = url.rpartition("@")
    if not sep or "/" in suffix:  # no suffix (an '@' before the host is userinfo, not a weight)
        return url, 100, STABLE, False
    match = _SUFFIX.match(suffix)
    if match is None:
        return None
    return base, int(match.group(1)), match.group(2) or STABLE, True


def check_routes(specs: Sequence[UpstreamSpec]) -> dict[str, list[UpstreamSpec]]:
    """The flags grouped by model, in flag order; ValueError naming the first problem."""
    routes: dict[str, list[UpstreamSpec]] = {}
    for spec in specs:
        routes.setdefault(spec.model, []).append(spec)
    for model, versions in routes.items():
        for spec in versions:
            if not 0 <= spec.weight <= 100:
                raise ValueError(f"--upstream {model}: weight {spec.weight} of version {spec.version!r} is out of "
                                 "range; allowed: 0-100")
        if len(versions) == 1:
            if versions[0].weighted and versions[0].weight != 100:
                raise ValueError(f"--upstream {model}: its one version {versions[0].version!r} has weight "
                                 f"{versions[0].weight}; allowed: 100 (a model's weights sum to 100)")
            continue
        if not all(spec.weighted for spec in versions):
            raise ValueError(f"--upstream names a model twice without weights: {model!r}; allowed: each version as "
                             "MODEL=URL@WEIGHT:VERSION, weights summing to 100")
        names = [spec.version for spec in versions]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"--upstream {model}: version {twice[0]!r} is named twice; allowed: distinct versions "
                             "per model")
        total = sum(spec.weight for spec in versions)
        if total != 100:
            raise ValueError(f"--upstream {model}: weights sum to {total} "
                             f"({', '.join(f'{s.version} {s.weight}' for s in versions)}); allowed: a sum of 100")
    return routes


class Router:
    """Picks a version of a model for each request, by weight (an injectable `random.Random` for tests)."""

    def __init__(self, weights: dict[str, list[tuple[str, int]]], rng: random.Random | None = None) -> None:
        self.weights = {model: [(v, w) for v, w in versions if w > 0] for model, versions in weights.items()}
        self.rng = rng or random.Random()

    def pick(self, model: str) -> str:
        """The version to serve this request; `stable` for a model with one version (no random draw)."""
        versions = self.weights.get(model)
        if not versions:
            return STABLE
        if len(versions) == 1:
            return versions[0][0]
        point = self.rng.randrange(100)
        for version, weight in versions:
            if point < weight:
                return version
            point -= weight
        return versions[-1][0]
