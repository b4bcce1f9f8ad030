"""Azure public-cloud regions: their programmatic names, availability zones and paired region.

A stack's `location` is checked against this table before anything is rendered: ARM accepts any string until
`pulumi up` reaches it (`westeurop` plans clean and fails at apply with LocationNotAvailableForResourceGroup).

Sources (checked 2025): the region list is `az account list-locations --query "[?metadata.regionType=='Physical']
.name"`; zones are the regions listed in "Azure regions with availability zone support"
(https://learn.microsoft.com/azure/reliability/regions-list); pairs are "Azure cross-region replication pairings"
(https://learn.microsoft.com/azure/reliability/cross-region-replication-azure). Geo-redundant backup of PostgreSQL
Flexible Server goes to the paired region only, so a region without a pair cannot have it
(https://learn.microsoft.com/azure/postgresql/flexible-server/concepts-backup-restore#geo-redundant-backup-and-restore).
Sovereign clouds (usgov*, china*) are not listed: this platform targets the public cloud. A region that is new since
the table was written is rejected, not guessed: add it here with its zones and pair.

GPU size availability differs per region and per subscription (quota, capacity) and changes monthly; no table here
claims it. `az vm list-skus --location <region> --size Standard_NC --output table` is the check (README, DR).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    name: str
    zones: bool
    """Whether the region has availability zones 1-3."""
    pair: str | None
    """The paired region (geo-redundant backups and GRS storage replicate there), None for a region without one."""


def _regions(with_zones: str, without_zones: str, pairs: dict[str, str]) -> dict[str, Region]:
    table = {}
    for names, zones in ((with_zones, True), (without_zones, False)):
        for name in names.split():
            table[name] = Region(name, zones, pairs.get(name))
    return table


# Pairs listed one way; each is added in both directions below except the one-way ones.
_PAIRS = {
    "westeurope": "northeurope", "eastus": "westus", "eastus2": "centralus", "westus2": "westcentralus",
    "northcentralus": "southcentralus", "uksouth": "ukwest", "francecentral": "francesouth",
    "germanywestcentral": "germanynorth", "swedencentral": "swedensouth", "switzerlandnorth": "switzerlandwest",
    "norwayeast": "norwaywest", "japaneast": "japanwest", "koreacentral": "koreasouth",
    "australiaeast": "australiasoutheast", "australiacentral": "australiacentral2", "canadacentral": "canadaeast",
    "centralindia": "southindia", "eastasia": "southeastasia", "southafricanorth": "southafricawest",
    "uaenorth": "uaecentral",
}
# One-way pairings: the second region's own pair is another one.
_ONE_WAY = {"westus3": "eastus", "brazilsouth": "southcentralus", "westindia": "southindia"}

AZURE_REGIONS: dict[str, Region] = _regions(
    with_zones="australiaeast austriaeast belgiumcentral brazilsouth canadacentral centralindia centralus "
               "chilecentral eastasia eastus eastus2 francecentral germanywestcentral indonesiacentral israelcentral "
               "italynorth japaneast japanwest koreacentral malaysiawest mexicocentral newzealandnorth northeurope "
               "norwayeast polandcentral qatarcentral southafricanorth southcentralus southeastasia spaincentral "
               "swedencentral switzerlandnorth uaenorth uksouth westeurope westus2 westus3",
    without_zones="australiacentral australiacentral2 australiasoutheast brazilsoutheast canadaeast francesouth "
                  "germanynorth jioindiacentral jioindiawest koreasouth northcentralus norwaywest southafricawest "
                  "southindia swedensouth switzerlandwest uaecentral ukwest westcentralus westindia westus",
    pairs={**_PAIRS, **{b: a for a, b in _PAIRS.items()}, **_ONE_WAY},
)


def region_problem(name: str) -> str | None:
    """Why `name` is not an Azure region this platform knows (with the closest names), or None."""
    if name in AZURE_REGIONS:
        return None
    close = difflib.get_close_matches(name.lower().replace(" ", ""), AZURE_REGIONS, n=3, cutoff=0.7)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (f"{name!r} is not an Azure region; {hint}allowed: a region name as `az account list-locations -o table` "
            "prints it (lowercase, no spaces), e.g. westeurope, northeurope, swedencentral")
