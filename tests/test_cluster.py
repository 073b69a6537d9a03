"""`kakeya cluster` on a real local Ray cluster: the HTTP ingress in front of 2 replicas of the tiny
Qwen3 (float32, greedy), driven with the official openai client. In order: (a) sessions stay on
their owner, (d) one session, two requests → one 409, (e) stateless prompts sharing a prefix meet
the prefix cache, (b) a killed replica's sessions continue elsewhere with the same output as one
server, (c) 2 → 1 replicas with no failed request. Runs in the gate (the `ray` marker)."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

import ray  # noqa: E402 - a declared dependency (pyproject: ray[serve])
from ray import serve  # noqa: E402

from http_server import openai_client, serving  # noqa: E402
from inference_engine.cluster import deploy  # noqa: E402
from inference_engine.config import EngineConfig, ModelConfig  # noqa: E402
from ray_cluster import cluster_serving  # noqa: E402
from test_grafana import dashboard_families, exported_families  # noqa: E402
from inference_engine.types import SpeculativeParams  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ENGINE = EngineConfig(speculative=SpeculativeParams("ngram", 4), cost_curve=(1.0,) * 17)
SYSTEM = "You are a careful assistant. " * 12  # a shared prefix longer than the routing prefix


class Chat:
    def __init__(self, running):
        self.running, self.url = running, running.url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def chat(self, messages, session=None, **kw):
        headers = {"x-session-id": session} if session else {}
        raw = self.client.chat.completions.with_raw_response.create(
            model=openai.NOT_GIVEN, messages=messages, max_tokens=kw.pop("max_tokens", 8), temperature=0,
            extra_headers=headers, extra_body={"ignore_eos": True, **kw})
        return raw.headers.get("x-kakeya-replica"), raw.parse()


@pytest.fixture(scope="module")
def model(tiny_qwen3_dir):
    return ModelConfig(model=str(tiny_qwen3_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def cluster(model):
    with cluster_serving(model, ENGINE) as running:
        yield Chat(running)


@pytest.fixture(scope="module")
def sessions():
    """The conversations test (a) opens, which later tests continue: session id → messages so far."""
    return {}


def _conversation(i: int) -> list:
    topic = ["rivers", "bridges", "owls", "clocks", "maps", "kites"][i % 6]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about {topic} ({i})."}]


def _metrics_showing(cluster, line: str) -> str:
    """/metrics once it shows `line` (replicas report every second; the ingress refreshes as often)."""
    for _ in range(20):
        body = httpx.get(cluster.url + "/metrics", timeout=30).text
        if line in body:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{line!r} not in /metrics:\n{body}")


def _turn(cluster, sid, messages, **kw):
    replica, r = cluster.chat(messages, sid, **kw)
    messages += [{"role": "assistant", "content": r.choices[0].message.content}, {"role": "user", "content": "More."}]
    return replica, r


def test_a_sessions_stay_with_their_owner(cluster, sessions):
    owners: dict[str, set[str]] = {}
    for i in range(16):  # first turns; keep 4 conversations that land on both replicas (ids hash at random)
        sid, messages = f"conv-{i}", _conversation(i)
        replica, r = _turn(cluster, sid, messages)
        assert r.usage.prompt_tokens_details.cached_tokens == 0
        seen = set().union(*owners.values())
        if len(owners) < 3 or seen - {replica} or len(seen) > 1:
            sessions[sid], owners[sid] = messages, {replica}
        if len(owners) == 4:
            break
    assert len(set().union(*owners.values())) == 2, "16 session ids all hashed to one replica"
    for _ in range(4):  # 20 turns of the 4 sessions in all
        for sid, messages in sessions.items():
            replica, r = _turn(cluster, sid, messages)
            owners[sid].add(replica)
            assert r.usage.prompt_tokens_details.cached_tokens > 0, sid
    assert all(len(o) == 1 for o in owners.values()), owners
    body = _metrics_showing(cluster, 'kakeya_cluster_session_turns_total{outcome="owner"} 16.0')
    assert body.count('kakeya_model_forwards_total{replica="') == 2  # each replica's engine metrics
    assert not dashboard_families() - exported_families(body)  # the Grafana dashboard has data for every panel


def test_d_two_requests_on_one_session_one_409(cluster):
    statuses = []

    def go():
        r = httpx.post(cluster.url + "/v1/chat/completions", timeout=120, headers={"x-session-id": "busy-one"},
                       json={"messages": [{"role": "user", "content": "Count."}], "max_tokens": 96, "ignore_eos": True})
        statuses.append((r.status_code, r.json().get("error", {}).get("code")))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert sorted(statuses) == [(200, None), (409, "session_busy")], statuses


def test_e_stateless_prompts_sharing_a_prefix_hit_the_prefix_cache(cluster):
    first_replica, _ = cluster.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello."}])
    replica, r = cluster.chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Goodbye."}])
    assert replica == first_replica and r.usage.prompt_tokens_details.cached_tokens > 40
    # one x-request-id, the client's own: Ray's proxy sets it, so the ingress app does not add another
    raw = httpx.post(cluster.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1},
                     headers={"x-request-id": "client-id-7"}, timeout=60)
    assert raw.status_code == 200 and raw.headers.get_list("x-request-id") == ["client-id-7"]


def test_b_killed_replica_sessions_continue_elsewhere(cluster, sessions, tiny_loaded):
    owner = {sid: cluster.chat(m, sid, max_tokens=1)[0] for sid, m in sessions.items()}  # where each lives now
    victim = sorted(owner.values())[0]
    actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(victim))
    ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    moved = [sid for sid, r in owner.items() if r == victim]
    with serving(tiny_loaded, ENGINE) as (single, _):  # the same conversations on one server
        alone = openai_client(single)
        for sid in moved:
            messages = sessions[sid]
            expected = alone.chat.completions.create(model=openai.NOT_GIVEN, messages=messages, max_tokens=8,
                                                     temperature=0, extra_body={"ignore_eos": True})
            replica, r = _turn(cluster, sid, messages)
            assert replica != victim and r.usage.prompt_tokens_details.cached_tokens == 0
            assert r.choices[0].message.content == expected.choices[0].message.content
    _metrics_showing(cluster, f'kakeya_cluster_session_turns_total{{outcome="handoff"}} {len(moved)}.0')


def test_c_scale_down_without_failed_requests(cluster, model):
    cluster.running.wait_replicas(2)  # Serve replaced the killed replica
    failures, done, stop = [], [], threading.Event()

    def load(sid):
        for turn in range(200):  # bounded: stops when the scale-down is over
            if stop.is_set():
                return
            if turn % 30 == 0:  # the conversation starts over well inside the 1,024-token context
                messages = [{"role": "user", "content": f"Session {sid}, keep talking."}]
            try:
                _turn(cluster, sid, messages, max_tokens=4)
                done.append(sid)
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                failures.append(repr(e))

    threads = [threading.Thread(target=load, args=(f"scale-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    serve.run(deploy.build(model, ENGINE, cluster.running.server, deploy.ClusterConfig(replicas=1)),
              name=cluster.running.config.app_name, route_prefix="/")
    cluster.running.wait_replicas(1)
    time.sleep(3)  # the sessions of the replica that left now continue on the other
    stop.set()
    for t in threads:
        t.join(120)
    assert not failures, failures[:3]
    assert len(done) > 10
