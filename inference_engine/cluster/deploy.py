"""`kakeya cluster`: the OpenAI ingress in front of N engine replicas on Ray Serve.

Ray's HTTP proxy → Ingress (the same FastAPI app as `kakeya serve`, over a RemoteEngine) →
EngineReplica × N, routed by Ray Serve's ConsistentHashRouter on the key RemoteEngine picks
(session id or prompt prefix), or by Serve's default power-of-two least-loaded router with
affinity off. The session directory is a named detached actor beside them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from ..config import EngineConfig, ModelConfig, ServerConfig
from ..http.app import ServerState, create_app
from ..metrics import Metrics
from .remote import RemoteEngine, directory_actor
from .replica import EngineReplica

NAMESPACE = "kakeya"
DIRECTORY = "kakeya-session-directory"
ROUTER = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    replicas: int = 2
    affinity: bool = True             # session / prompt-prefix affinity; False: least-loaded
    ray_address: Optional[str] = None  # None: start Ray on this machine; else join that cluster
    threads_per_replica: int = 1      # torch threads of each replica (they share the machine's cores)
    max_ongoing_requests: int = 16    # per replica, beyond which Serve queues at the router
    app_name: str = "kakeya"


class Ingress:
    async def __init__(self, engines, config: ServerConfig, directory: str, namespace: str):
        handle = ray.get_actor(directory, namespace=namespace)
        self.remote = RemoteEngine(engines, handle, await engines.describe.remote())  # waits for a replica
        await self.remote.start()
        snapshot = lambda: self.remote.snapshot  # noqa: E731 - refreshed every second by the RemoteEngine
        metrics = Metrics(lambda: 0, lambda: 0, replicas=lambda: (
            {rid: r["metrics"] for rid, r in snapshot()["replicas"].items()}, snapshot()["turns"]))
        self.state = ServerState(config)
        self.state.attach(self.remote, metrics)

    def __serve_build_asgi_app__(self):
        return create_app(self.state, request_ids=False)  # Ray's proxy sets x-request-id itself


def build(model: ModelConfig, engine: EngineConfig, server: ServerConfig, cluster: ClusterConfig):
    router = RequestRouterConfig(request_router_class=ROUTER, request_router_kwargs={
        "num_virtual_nodes": 100, "num_fallback_replicas": 1}) if cluster.affinity else None
    replica_options = dict(name="KakeyaEngine", num_replicas=cluster.replicas, ray_actor_options={"num_cpus": 0},
                           max_ongoing_requests=cluster.max_ongoing_requests, graceful_shutdown_timeout_s=60)
    if router is not None:
        replica_options["request_router_config"] = router
    engines = serve.deployment(EngineReplica).options(**replica_options).bind(
        model, engine, DIRECTORY, NAMESPACE, cluster.threads_per_replica)
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name="KakeyaIngress", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    return ingress.bind(engines, server, DIRECTORY, NAMESPACE)


def connect(cluster: ClusterConfig) -> None:
    """Start (or join) Ray. It installs a SIGTERM handler that aborts with a stack dump: a driver
    that wants its own must install it after this."""
    if not ray.is_initialized():
        ray.init(address=cluster.ray_address, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)


def start(model: ModelConfig, engine: EngineConfig, server: ServerConfig, cluster: ClusterConfig) -> None:
    """Start (or join) Ray, the directory and both deployments; returns once the app is ready."""
    connect(cluster)
    directory_actor(DIRECTORY, NAMESPACE, engine.session_ttl)
    serve.start(http_options={"host": server.host, "port": server.port})
    serve.run(build(model, engine, server, cluster), name=cluster.app_name, route_prefix="/")


def stop(cluster: ClusterConfig) -> None:
    serve.delete(cluster.app_name)
    try:
        ray.kill(ray.get_actor(DIRECTORY, namespace=NAMESPACE))
    except ValueError:
        pass
