"""docs/grafana/kakeya.json: it decodes into Grafana's own dashboard model (grafana-foundation-sdk,
generated from Grafana's schema) with nothing dropped or changed, its panels are complete, and
every metric its queries use is one the server really exports (the cluster-only family is
checked against `kakeya cluster` in tests/test_cluster.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client.parser import text_string_to_metric_families

from http_server import openai_client, serving

DASHBOARD = json.loads((Path(__file__).parents[1] / "docs" / "grafana" / "kakeya.json").read_text())
CLUSTER_ONLY = {"kakeya_cluster_session_turns"}


def dashboard_families() -> set[str]:
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    return {re.sub(r"_(bucket|sum|count|total)$", "", m) for e in exprs for m in re.findall(r"kakeya_[a-z0-9_]+", e)}


def exported_families(metrics_text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(metrics_text) if f.samples}


def _subset(ours, theirs, path="") -> list[str]:
    """Where `ours` is not contained in `theirs` (the model may add defaults, never drop or change)."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [path]
        return [d for k, v in ours.items() for d in (_subset(v, theirs[k], f"{path}/{k}") if k in theirs else [f"{path}/{k}"])]
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [path]
        return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in _subset(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [path]


def test_dashboard_decodes_into_grafanas_model_unchanged():
    decoded = json.loads(json.dumps(Dashboard.from_json(DASHBOARD), cls=JSONEncoder))
    assert _subset(DASHBOARD, decoded) == []
    assert DASHBOARD["uid"] and DASHBOARD["schemaVersion"] >= 36 and len(DASHBOARD["panels"]) >= 12
    for p in DASHBOARD["panels"]:
        assert p["type"] == "timeseries" and p["title"] and p["targets"], p["title"]
        assert all(t["expr"] and t["refId"] and t["datasource"]["type"] == "prometheus" for t in p["targets"])
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(set(ids)) == len(ids)


def test_every_panel_reads_metrics_the_server_exports(tiny_loaded):
    with serving(tiny_loaded) as (server, _):
        client = openai_client(server)
        for _ in range(2):  # the second meets the prefix cache
            client.chat.completions.create(model=tiny_loaded.info.name, messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=4, temperature=0,
                                           extra_body={"speculative": {"method": "ngram", "num_draft_tokens": 2}})
        text = httpx.get(server.url + "/metrics").text
    missing = dashboard_families() - CLUSTER_ONLY - exported_families(text)
    assert not missing, missing
