"""The monthly cost estimate (issue 23): the price table, its refresh from the Retail Prices API, the estimate of
the rendered stacks, the usage file, the diff against a base plan and the cost-cap policy.

Expected figures are computed from the shipped table (policies/prices.json), never typed by hand, so a refreshed
table keeps these tests true.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from inferforge.components.gpu_sizes import GPU_VM_SIZES
from inferforge.policies.costing import HOURS_PER_MONTH, PRICES_PATH, PriceTable, load_prices
from inferforge.stacks import cost, prices
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import RenderedResource

REPO = Path(__file__).resolve().parents[2]
TABLE = load_prices()
POOL = "azure-native:containerservice:AgentPool"
USAGE = cost.load_usage(Path("/nonexistent"))  # the documented defaults


def vm_month(size: str) -> float:
    row = TABLE.vm(size, "westeurope")
    assert row is not None, size
    return row.retailPrice * HOURS_PER_MONTH


def estimate(resources: list[Any], usage: dict[str, float] | None = None, today: date | None = None):
    return cost.estimate_stack(resources, usage or USAGE, today=today)


def with_inputs(resources: list[RenderedResource], type_: str, change) -> list[RenderedResource]:
    out = []
    for r in resources:
        if r.type == type_:
            inputs = copy.deepcopy(r.inputs)
            change(inputs)
            r = replace(r, inputs=inputs)
        out.append(r)
    return out


def item(est, name: str, text: str):
    return next(i for r in est.resources if r.name == name for i in r.items if text in i.item)


# --- the table ----------------------------------------------------------------------------------


def test_every_row_names_its_source_date_currency_and_whether_it_is_an_estimate():
    rows = json.loads(PRICES_PATH.read_text())["rows"]
    for row in rows:
        assert row["source"].startswith("https://"), row
        assert row["currencyCode"] == "USD" and date.fromisoformat(row["priceDate"])
        assert isinstance(row["estimate"], bool)
        assert not row["estimate"] or row["note"], f"an estimate says how it was derived: {row}"
        for field in ("serviceName", "armSkuName", "armRegionName", "meterName", "unitOfMeasure", "retailPrice"):
            assert field in row  # the Retail Prices API's field names


def test_every_gpu_size_the_policies_allow_is_priced_with_the_gpu_count_the_components_use():
    allowed = set()
    for stack in ("dev", "prod"):
        config = json.loads((REPO / "policies" / "config" / f"{stack}.json").read_text())
        allowed |= set(config["aks-gpu-vm-size-allowed"]["allowedGpuVmSizes"])
    for size in allowed:
        row = TABLE.vm(size, "westeurope")
        assert row is not None, f"{size} is allowed but not priced"
        assert row.gpus == GPU_VM_SIZES[size].gpus


# --- refresh: parser and paging on API-shaped answers ---------------------------------------------------


def _api_item(sku: str, meter: str, price: float, **extra: Any) -> dict[str, Any]:
    return {"currencyCode": "USD", "tierMinimumUnits": 0.0, "retailPrice": price, "unitPrice": price,
            "armRegionName": "westeurope", "location": "EU West", "effectiveStartDate": "2026-10-01T00:00:00Z",
            "meterId": "00000000-0000-0000-0000-000000000000", "meterName": meter, "productId": "DZH318Z0BQ4L",
            "skuId": "DZH318Z0BQ4L/00TG", "productName": "Virtual Machines NCads H100 v5 Series",
            "skuName": meter, "serviceName": "Virtual Machines", "serviceId": "DZH313Z7MMC8",
            "serviceFamily": "Compute", "unitOfMeasure": "1 Hour", "type": "Consumption", "isPrimaryMeterRegion": True,
            "armSkuName": sku, **extra}


class FakeApi:
    """Pages shaped like https://prices.azure.com/api/retail/prices answers, linked by NextPageLink."""

    def __init__(self, pages: dict[str, dict[str, Any]]) -> None:
        self.pages, self.asked = pages, []

    def __call__(self, url: str) -> dict[str, Any]:
        self.asked.append(url)
        return self.pages.get(url, {"BillingCurrency": "USD", "CustomerEntityId": "Default",
                                    "CustomerEntityType": "Retail", "Items": [], "NextPageLink": None, "Count": 0})


def _page(items: list[dict[str, Any]], next_link: str | None) -> dict[str, Any]:
    return {"BillingCurrency": "USD", "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
            "Items": items, "NextPageLink": next_link, "Count": len(items)}


def test_refresh_follows_next_page_link_and_takes_the_consumption_linux_meter():
    sku = "Standard_NC80adis_H100_v5"
    first = prices.query_url("Virtual Machines", "westeurope", sku)
    assert "serviceName eq 'Virtual Machines'" in prices.urllib.parse.unquote(first)
    assert "armRegionName eq 'westeurope'" in prices.urllib.parse.unquote(first)
    second = first + "&$skip=100"
    api = FakeApi({
        first: _page([_api_item(sku, "NC80adis H100 v5 Spot", 3.1, skuName="NC80adis H100 v5 Spot"),
                      _api_item(sku, "NC80adis H100 v5", 99.0, type="Reservation")], second),
        second: _page([_api_item(sku, "NC80adis H100 v5", 16.5),
                       _api_item(sku, "NC80adis H100 v5", 20.0,
                                 productName="Virtual Machines NCads H100 v5 Series Windows")], None),
    })
    row = next(r for r in json.loads(PRICES_PATH.read_text())["rows"] if r["armSkuName"] == sku)
    new, report = prices.refresh({"currency": "USD", "rows": [row]}, fetch=api, today=date(2027, 1, 2))

    assert api.asked == [first, second]
    refreshed = new["rows"][0]
    assert refreshed["retailPrice"] == 16.5 and refreshed["estimate"] is False
    assert refreshed["priceDate"] == "2027-01-02" and refreshed["source"] == first
    assert refreshed["effectiveStartDate"] == "2026-10-01T00:00:00Z"
    assert report == [f"updated Virtual Machines | {sku} | NC80adis H100 v5: {row['retailPrice']} -> 16.5 per 1 Hour"]


def test_refresh_keeps_and_reports_a_row_the_api_does_not_answer_and_stops_on_a_repeated_link():
    row = json.loads(PRICES_PATH.read_text())["rows"][0]
    url = prices.query_url(row["serviceName"], row["armRegionName"], row["armSkuName"])
    api = FakeApi({url: _page([], url)})  # a page that links to itself
    new, report = prices.refresh({"rows": [row]}, fetch=api)
    assert new["rows"] == [row] and api.asked == [url]
    assert report[0].startswith("kept")


def test_refresh_rejects_an_answer_that_is_not_a_prices_page():
    with pytest.raises(ValueError, match="no 'Items' list"):
        list(prices.items("https://example.invalid/", fetch=lambda url: {"error": "throttled"}))


# --- the estimate of the rendered stacks -----------------------------------------------------------------


def test_prod_gpu_pool_band_and_fixed_items_come_from_the_table(prod):
    est = estimate(prod)
    h100 = vm_month("Standard_NC80adis_H100_v5")
    # 2 replicas x TP 2 = 4 GPUs = 2 nodes of 2 H100s: the floor is 2 nodes although minCount is 1.
    pool = item(est, "aks-pool-gpuh100", "nodes")
    assert (pool.monthly_min, pool.monthly_max) == pytest.approx((2 * h100, 4 * h100), abs=0.01)
    afd = TABLE.find("Azure Front Door Service", "Premium_AzureFrontDoor", "Premium Base Fees", "global")
    assert item(est, "frontdoor-profile", "base fee").monthly_max == pytest.approx(afd.retailPrice)
    pg = TABLE.find("Azure Database for PostgreSQL", "Standard_D4ds_v5", "4 vCore", "westeurope")
    assert item(est, "postgres-server", "compute").monthly_max == pytest.approx(2 * pg.retailPrice * HOURS_PER_MONTH,
                                                                               abs=0.01)  # HA doubles it
    assert est.monthly_min < est.monthly_max
    assert est.monthly_max == pytest.approx(sum(r.monthly_max for r in est.resources), abs=0.01)


def test_dev_scales_its_gpu_pool_from_zero_and_bills_no_aks_tier(dev_platform):
    est = estimate(dev_platform)
    pool = item(est, "aks-pool-gpua100", "nodes")
    assert (pool.monthly_min, pool.monthly_max) == pytest.approx((0, 2 * vm_month("Standard_NC24ads_A100_v4")),
                                                                 abs=0.01)
    assert item(est, "aks-cluster", "cluster management").monthly_max == 0
    firewall = TABLE.find("Azure Firewall", "Basic", "Basic Deployment", "westeurope")
    assert item(est, "egress-firewall-firewall", "deployment").monthly_max == pytest.approx(
        firewall.retailPrice * HOURS_PER_MONTH)


def test_gpu_pool_max_count_4_to_16_moves_the_upper_band_by_12_vm_months(prod):
    before = estimate(prod)
    after = estimate(with_inputs(prod, POOL, lambda i: i.update(maxCount=16)))
    assert after.monthly_max - before.monthly_max == pytest.approx(12 * vm_month("Standard_NC80adis_H100_v5"),
                                                                   abs=0.02)
    assert after.monthly_min == pytest.approx(before.monthly_min)


def test_a_model_replica_raises_the_floor_by_the_nodes_its_gpus_need(prod):
    def third_replica(inputs: dict[str, Any]) -> None:
        inputs["spec"]["replicas"] = 3.0

    resources = [replace(r, inputs=copy.deepcopy(r.inputs)) if r.name == "inference-deployment" else r for r in prod]
    for r in resources:
        if r.name == "inference-deployment":
            third_replica(r.inputs)
    before, after = estimate(prod), estimate(resources)
    # 3 replicas x TP 2 = 6 GPUs: 3 nodes of 2 GPUs, one more than 2 replicas need.
    assert after.monthly_min - before.monthly_min == pytest.approx(vm_month("Standard_NC80adis_H100_v5"), abs=0.02)
    assert after.monthly_max == pytest.approx(before.monthly_max)


def test_a_registry_replica_in_another_region_adds_one_premium_registry_unit(prod):
    registry = next(r for r in prod if r.type == "azure-native:containerregistry:Registry")
    replication = RenderedResource(type="azure-native:containerregistry:Replication", name="registry-northeurope",
                                   urn=registry.urn + "-replication", parent_urn=registry.parent_urn,
                                   inputs={"location": "northeurope", "registryName": "crinferforgeprod"}, custom=True)
    before, after = estimate(prod), estimate([*prod, replication])
    unit = TABLE.find("Container Registry", "Premium", "Premium Geo Replication", "global")
    assert after.monthly_max - before.monthly_max == pytest.approx(unit.retailPrice * HOURS_PER_MONTH / 24, abs=0.01)


def test_a_postgres_read_replica_costs_its_compute_and_storage(prod):
    server = next(r for r in prod if r.type == "azure-native:dbforpostgresql:Server")
    inputs = copy.deepcopy(server.inputs)
    inputs.update(createMode="Replica", highAvailability={"mode": "Disabled"})
    replica = replace(server, urn=server.urn + "-replica", name="postgres-replica", inputs=inputs)
    before, after = estimate(prod), estimate([*prod, replica])
    compute = TABLE.find("Azure Database for PostgreSQL", "Standard_D4ds_v5", "4 vCore", "westeurope")
    storage = TABLE.find("Azure Database for PostgreSQL", "Storage", "Storage Data Stored", "westeurope")
    expected = compute.retailPrice * HOURS_PER_MONTH + storage.retailPrice * inputs["storage"]["storageSizeGB"]
    assert after.monthly_max - before.monthly_max == pytest.approx(expected, abs=0.02)
    assert item(after, "postgres-replica", "compute").item.startswith("read replica")


def test_usage_driven_items_follow_the_usage_file(prod):
    more = {**USAGE, "frontDoorRequestsPerMonth": USAGE["frontDoorRequestsPerMonth"] + 10_000_000}
    requests = TABLE.find("Azure Front Door Service", "Premium_AzureFrontDoor", "Premium Requests", "global")
    delta = estimate(prod, more).monthly_max - estimate(prod).monthly_max
    assert delta == pytest.approx(1000 * requests.retailPrice, abs=0.01)  # 10M requests = 1,000 x 10K


def test_an_unpriced_resource_is_listed_not_silently_zero(prod):
    unknown = RenderedResource(type="azure-native:cognitiveservices:Account", name="openai", urn="urn:x::openai",
                               parent_urn=None, inputs={"sku": {"name": "S0"}}, custom=True)
    est = estimate([*prod, unknown])
    assert [r.name for r in est.unpriced() if r.name == "openai"] == ["openai"]
    assert "no pricing rule" in next(r.reason for r in est.unpriced() if r.name == "openai")
    assert "openai" in cost.format_text(est, "prod")
    # A VM size the table lacks leaves the pool unpriced, with the reason.
    est = estimate(with_inputs(prod, POOL, lambda i: i.update(vmSize="Standard_NC999_v9")))
    assert any(r.name == "aks-pool-gpuh100" and "no price" in r.reason for r in est.unpriced())
    # Every resource is priced, free with a reason, or unpriced with one.
    assert all(r.status in ("priced", "free", "unpriced") and (r.status == "priced" or r.reason) for r in est.resources)


def test_a_price_older_than_90_days_is_flagged(prod_platform):
    recorded = date.fromisoformat(TABLE.rows[0].priceDate)
    fresh = estimate(prod_platform, today=recorded + timedelta(days=90))
    stale = estimate(prod_platform, today=recorded + timedelta(days=91))
    assert fresh.stale_meters == []
    assert stale.stale_meters and "STALE" in cost.format_text(stale, "prod")
    assert "**STALE**" in cost.format_markdown(stale, "prod")


# --- usage file ------------------------------------------------------------------------------------------


def test_usage_file_errors_name_the_key(tmp_path):
    path = tmp_path / "usage.dev.yaml"
    path.write_text("frontDoorEgressGb: lots\nlogAnalyticsGbPerDay: -1\nrequestsPerDay: 5\n")
    with pytest.raises(ConfigError) as raised:
        cost.load_usage(path)
    problems = "\n".join(raised.value.problems)
    assert "usage.dev.yaml: frontDoorEgressGb: 'lots'" in problems
    assert "usage.dev.yaml: logAnalyticsGbPerDay: -1" in problems
    assert "usage.dev.yaml: requestsPerDay: unknown usage key" in problems


def test_shipped_usage_files_are_valid_and_prods_matches_the_cost_caps_usage():
    for stack in ("dev", "test", "prod"):
        cost.load_usage(REPO / f"usage.{stack}.yaml")
    for stack in ("test", "prod"):
        usage = cost.load_usage(REPO / f"usage.{stack}.yaml")
        cap = json.loads((REPO / "policies" / "config" / f"{stack}.json").read_text())["stack-monthly-cost-cap"]
        assert {k: float(v) for k, v in cap["usage"].items()} == usage


# --- plan: text, JSON, Markdown, diff against a base plan ------------------------------------------------


def test_plan_json_and_comment_carry_the_estimate_and_the_change_against_a_base(tmp_path, capsys):
    from inferforge.stacks import plan

    base = tmp_path / "base.json"
    assert plan.run(["--stack", "dev", "--json", "--no-policies"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["cost"]["monthly"]["max"] > document["cost"]["monthly"]["min"] >= 0
    # The base branch had a smaller GPU pool: 1 node at most.
    for r in document["resources"]:
        if r["type"] == POOL:
            r["inputs"]["maxCount"] = 1
    base.write_text(json.dumps(document))
    comment = tmp_path / "comment.md"
    summary = tmp_path / "summary.md"
    assert plan.run(["--stack", "dev", "--json", "--base-plan", str(base), "--comment", str(comment),
                     "--markdown", str(summary)]) == 0
    head = json.loads(capsys.readouterr().out)
    a100 = vm_month("Standard_NC24ads_A100_v4")
    assert head["cost"]["diff"]["delta"]["max"] == pytest.approx(a100, abs=0.02)
    text = comment.read_text()
    assert "Policy pack" in text and "Change against the base branch" in text and "aks-pool-gpua100" in text
    assert "### Monthly cost estimate: `dev`" in summary.read_text()


def test_plan_refuses_a_bad_usage_file_with_exit_2(tmp_path, capsys):
    from inferforge.stacks import plan

    bad = tmp_path / "usage.yaml"
    bad.write_text("blobStorageGb: -5\n")
    assert plan.run(["--stack", "dev", "--no-policies", "--usage", str(bad)]) == plan.EXIT_BAD_INPUT
    assert "blobStorageGb" in capsys.readouterr().err


def test_an_empty_base_plan_means_no_base():
    est = cost.estimate_stack([], USAGE)
    assert cost.diff_line(cost.diff(None, est)) == "No base-branch estimate to compare with."
    assert math.isclose(est.monthly_max, 0)


# --- the cap policy ---------------------------------------------------------------------------------------


def test_cost_cap_fires_over_the_cap_and_is_advisory_in_dev(dev, tmp_path):
    from inferforge.policies.offline import evaluate

    from tests.policies.conftest import run_policy

    est = estimate(dev)
    assert run_policy("stack-monthly-cost-cap", dev, tmp_path, {"maxMonthlyUsd": est.monthly_max + 100}) == []
    found = run_policy("stack-monthly-cost-cap", dev, tmp_path, {"maxMonthlyUsd": est.monthly_max - 100})
    assert len(found) == 1 and "over the cap" in found[0].message
    # The shipped dev config makes it advisory, with a cap below a 10-node A100 pool.
    big = with_inputs(dev, POOL, lambda i: i.update(maxCount=10))
    violations = [v for v in evaluate(big, REPO / "policies" / "config" / "dev.json", "dev")
                  if v.policy_name == "stack-monthly-cost-cap"]
    assert [v.enforcement_level for v in violations] == ["advisory"]


def test_cost_cap_without_a_configured_cap_checks_nothing(prod, tmp_path):
    from tests.policies.conftest import run_policy

    assert run_policy("stack-monthly-cost-cap", prod, tmp_path, {}) == []


def test_price_table_loads_only_known_units(tmp_path):
    rows = json.loads(PRICES_PATH.read_text())["rows"]
    table = PriceTable([])
    assert table.find("x", "y", "z", "westeurope") is None
    for row in load_prices().rows:
        row.per_unit_month()  # raises on a unit the estimator cannot convert
    assert len(rows) == len(TABLE.rows)
