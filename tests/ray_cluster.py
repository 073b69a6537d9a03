"""`kakeya cluster` for tests: a local Ray cluster (2 CPUs, no dashboard) with the ingress on a free
127.0.0.1 port, shut down (Serve and Ray) when the block ends."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import httpx

from http_server import free_port


@dataclass
class RunningCluster:
    port: int
    config: object  # deploy.ClusterConfig
    server: object  # ServerConfig

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def replicas(self) -> list[str]:
        return [r["id"] for r in httpx.get(self.url + "/healthz", timeout=30).json()["replicas"]]

    def wait_replicas(self, n: int, timeout: float = 180) -> list[str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                ids = self.replicas()
                if len(ids) == n:
                    return ids
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"the cluster did not reach {n} live replicas")


@contextlib.contextmanager
def cluster_serving(model, engine, replicas: int = 2):
    import ray
    from ray import serve

    from inference_engine.cluster import deploy
    from inference_engine.config import ServerConfig

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace=deploy.NAMESPACE)
    running = RunningCluster(free_port(), deploy.ClusterConfig(replicas=replicas), None)
    running.server = ServerConfig(port=running.port)
    try:
        deploy.start(model, engine, running.server, running.config)
        running.wait_replicas(replicas)
        yield running
    finally:
        serve.shutdown()
        ray.shutdown()
