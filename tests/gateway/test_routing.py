"""A model served by several versions (a canary beside the stable server): the flags, the weights, the pick."""

from __future__ import annotations

import argparse
import random
from collections import Counter

import pytest

from gateway.app import Gateway, GatewaySettings
from gateway.cli import _upstream, build_parser
from gateway.routing import Router, UpstreamSpec, check_routes, split_weight
from gateway.serve import upstream_routes
from gateway.upstream import Upstream


def test_the_old_flag_is_one_stable_version_with_all_the_traffic() -> None:
    assert _upstream("llama=http://inference.llama.svc:80/") == ("llama", "http://inference.llama.svc:80")
    routes = upstream_routes([("llama", "http://inference.llama.svc:80")])
    assert routes == {"llama": [UpstreamSpec("llama", "http://inference.llama.svc:80", 100, "stable")]}


def test_a_canary_is_a_second_flag_with_a_weight_and_a_version() -> None:
    args = build_parser().parse_args([
        "serve", "--database-url", "postgresql://x@h/db", "--redis-url", "redis://h:6379/0",
        "--upstream", "llama=http://inference.llama.svc:80@95:stable",
        "--upstream", "llama=http://inference-canary.llama-canary.svc:80@5:canary"])
    routes = upstream_routes(args.upstream)
    assert [(s.url, s.weight, s.version) for s in routes["llama"]] == [
        ("http://inference.llama.svc:80", 95, "stable"), ("http://inference-canary.llama-canary.svc:80", 5, "canary")]


@pytest.mark.parametrize(("flags", "message"), [
    ([("m", "http://a:1"), ("m", "http://b:1")], "names a model twice without weights"),
    ([("m", "http://a:1@90:stable"), ("m", "http://b:1@5:canary")], "weights sum to 95"),
    ([("m", "http://a:1@50:stable"), ("m", "http://b:1@50:stable")], "version 'stable' is named twice"),
    ([("m", "http://a:1@101:stable"), ("m", "http://b:1@0:canary")], "out of range; allowed: 0-100"),
    ([("m", "http://a:1@40:canary")], "allowed: 100"),
])
def test_bad_weights_are_refused_naming_the_model_and_what_is_allowed(flags, message) -> None:
    specs = [UpstreamSpec(model, *split_weight(target)) for model, target in flags]  # type: ignore[misc]
    with pytest.raises(ValueError, match=message):
        check_routes(specs)


@pytest.mark.parametrize("value", ["m=http://a:1@", "m=http://a:1@x:canary", "m=http://a:1@5:Canary", "m=http://a:1@5:"])
def test_a_malformed_weight_suffix_is_a_usage_error(value) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="MODEL=http"):
        _upstream(value)


def test_the_pick_follows_the_weights_with_a_seeded_rng() -> None:
    router = Router({"m": [("stable", 95), ("canary", 5)]}, random.Random(7))
    picks = Counter(router.pick("m") for _ in range(20_000))
    assert 0.04 < picks["canary"] / 20_000 < 0.06
    assert Router({"m": [("stable", 100), ("canary", 0)]}).pick("m") == "stable"
    assert Router({}).pick("other") == "stable"


def test_the_gateway_routes_each_request_to_a_version_and_faces_clients_with_the_stable_one() -> None:
    gateway = Gateway(store=None, limiter=None, cache=None, upstreams={}, pepper=b"p",  # type: ignore[arg-type]
                      settings=GatewaySettings(), rng=random.Random(1))
    stable = Upstream("m", "http://a:1")
    canary = Upstream("m", "http://b:1", version="canary")
    gateway.add_upstream(canary, 30)
    gateway.add_upstream(stable, 70)
    assert gateway.upstreams["m"] is stable and len(gateway.all_upstreams()) == 2
    chosen = Counter(gateway.route("m", stable).version for _ in range(10_000))
    assert 0.27 < chosen["canary"] / 10_000 < 0.33
    # Each version keeps its own tokenizer pin: nothing is shared between the two upstreams.
    assert stable.counter is None and canary.counter is None and stable is not canary
