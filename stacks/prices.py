"""`python -m stacks prices refresh|list`: regenerate the price table from the Azure Retail Prices API, or show it.

The API (https://prices.azure.com/api/retail/prices, public, no login) answers
``{"BillingCurrency", "Items": [...], "NextPageLink": <url or null>, "Count": n}``, 100 items a page, filtered
with OData (``$filter=serviceName eq '...' and armRegionName eq '...' and armSkuName eq '...'``). Refresh asks
once per (service, region, SKU) of the current table, follows NextPageLink to the end, and replaces each row whose
meter it finds by the API's consumption price (estimate false, source: the query URL, priceDate: today). Rows the
API does not answer keep their values and say so. Build machines cannot reach the API: run it where they can.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from inferforge.policies.costing import PRICES_PATH, STALE_AFTER_DAYS, load_prices

API = "https://prices.azure.com/api/retail/prices"
MAX_PAGES = 50

Fetch = Callable[[str], dict[str, Any]]


def fetch_json(url: str, timeout: float = 30.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a fixed https endpoint
        return json.loads(response.read().decode("utf-8"))


def query_url(service: str, region: str, sku: str) -> str:
    clauses = [f"serviceName eq '{service}'", f"armSkuName eq '{sku}'", "priceType eq 'Consumption'"]
    if region.lower() != "global":
        clauses.insert(1, f"armRegionName eq '{region}'")
    return f"{API}?currencyCode='USD'&" + urllib.parse.urlencode({"$filter": " and ".join(clauses)},
                                                                   quote_via=urllib.parse.quote)


def items(url: str, fetch: Fetch = fetch_json) -> Iterator[dict[str, Any]]:
    """Every item of a query, page after page through NextPageLink (bounded, in case a link repeats)."""
    seen: set[str] = set()
    next_url: str | None = url
    while next_url and next_url not in seen and len(seen) < MAX_PAGES:
        seen.add(next_url)
        page = fetch(next_url)
        if not isinstance(page, dict) or not isinstance(page.get("Items"), list):
            raise ValueError(f"{next_url}: not a Retail Prices API page (no 'Items' list)")
        yield from (item for item in page["Items"] if isinstance(item, dict))
        next_url = page.get("NextPageLink") or None


def _matches(item: dict[str, Any], row: dict[str, Any]) -> bool:
    return (item.get("meterName") == row["meterName"] and item.get("type", "Consumption") == "Consumption"
            and not str(item.get("skuName", "")).endswith(("Spot", "Low Priority"))
            and not str(item.get("productName", "")).endswith("Windows"))


def refresh(document: dict[str, Any], fetch: Fetch = fetch_json, today: date | None = None
            ) -> tuple[dict[str, Any], list[str]]:
    """A new table document and one line per row: refreshed (old -> new) or kept (why)."""
    today = today or date.today()
    cache: dict[str, list[dict[str, Any]]] = {}
    report = []
    rows = []
    for row in document["rows"]:
        url = query_url(row["serviceName"], row["armRegionName"], row["armSkuName"])
        if url not in cache:
            try:
                cache[url] = list(items(url, fetch))
            except (OSError, ValueError) as exc:
                cache[url] = []
                report.append(f"error: {url}: {exc}")
        found = [item for item in cache[url] if _matches(item, row)]
        # The current rate: the latest effectiveStartDate of the meter's first tier.
        found.sort(key=lambda i: (float(i.get("tierMinimumUnits") or 0), -_ordinal(i.get("effectiveStartDate"))))
        if not found:
            rows.append(row)
            report.append(f"kept    {row['serviceName']} | {row['armSkuName']} | {row['meterName']}: not in the API's "
                          "answer")
            continue
        item = found[0]
        new = {**row, "retailPrice": float(item["retailPrice"]), "unitOfMeasure": item.get("unitOfMeasure",
                                                                                           row["unitOfMeasure"]),
               "currencyCode": item.get("currencyCode", "USD"), "effectiveStartDate": item.get("effectiveStartDate"),
               "productName": item.get("productName", row.get("productName")), "priceDate": today.isoformat(),
               "source": url, "estimate": False, "note": "from the Azure Retail Prices API"}
        rows.append(new)
        report.append(f"updated {row['serviceName']} | {row['armSkuName']} | {row['meterName']}: "
                      f"{row['retailPrice']} -> {new['retailPrice']} per {new['unitOfMeasure']}")
    return {**document, "rows": rows}, report


def _ordinal(value: Any) -> int:
    try:
        return date.fromisoformat(str(value)[:10]).toordinal()
    except ValueError:
        return 0


def run(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacks prices",
                                     description="the cost estimate's price table (policies/prices.json)")
    sub = parser.add_subparsers(dest="command", required=True)
    refresh_cmd = sub.add_parser("refresh", help="replace the rows' prices with the Azure Retail Prices API's")
    refresh_cmd.add_argument("--table", type=Path, default=PRICES_PATH,
                             help=f"table to refresh (default {PRICES_PATH})")
    refresh_cmd.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    sub.add_parser("list", help="the rows: price, unit, date, estimate or not, source")
    args = parser.parse_args(argv)
    if args.command == "list":
        today = date.today()
        for row in load_prices().rows:
            stale = row.age_days(today) > STALE_AFTER_DAYS
            flags = (" estimate" if row.estimate else "") + (" STALE" if stale else "")
            print(f"{row.key:<95} {row.retailPrice:>10} / {row.unitOfMeasure:<10} {row.priceDate}{flags}  "
                  f"{row.source}")
        return 0
    document = json.loads(args.table.read_text(encoding="utf-8"))
    try:
        new, report = refresh(document)
    except OSError as exc:
        print(f"error: the Retail Prices API is not reachable: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report))
    if any(line.startswith("error:") for line in report) and not any(line.startswith("updated") for line in report):
        print("error: no row could be refreshed; the table is unchanged", file=sys.stderr)
        return 1
    if not args.dry_run:
        args.table.write_text(json.dumps(new, indent=1) + "\n", encoding="utf-8")
    return 0
