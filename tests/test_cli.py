"""`kakeya generate` end to end, in-process, on the real tiny Qwen3 and the real SmolLM2."""
from __future__ import annotations

import pytest

from inference_engine.cli import main


def test_generate_streams_and_reports_stats(tiny_qwen3_dir, capsys):
    rc = main(["generate", "Hello there", "--model", str(tiny_qwen3_dir), "--device", "cpu", "--max-tokens", "8",
               "--num-draft-tokens", "3"])
    out = capsys.readouterr()
    assert rc == 0
    assert "8 tokens in" in out.err and "finish length" in out.err and "speculation:" in out.err
    assert out.out.endswith("\n")


def test_generate_with_stop_string_and_sampling(tiny_qwen3_dir, capsys):
    rc = main(["generate", "Hi", "--model", str(tiny_qwen3_dir), "--max-tokens", "6", "--temperature", "0.7",
               "--seed", "1", "--top-k", "50", "--stop", "zzzz", "--system", "Be brief.", "--speculative-method", "none"])
    assert rc == 0 and "tokens in" in capsys.readouterr().err


def test_generate_error_is_reported_not_raised(tmp_path, capsys):
    rc = main(["generate", "Hi", "--model", str(tmp_path / "missing.gguf")])
    assert rc == 2 and "GGUF file not found" in capsys.readouterr().err


def test_environment_supplies_defaults(monkeypatch, tiny_qwen3_dir, capsys):
    monkeypatch.setenv("KAKEYA_MODEL", str(tiny_qwen3_dir))
    monkeypatch.setenv("KAKEYA_SPECULATIVE_METHOD", "none")
    assert main(["generate", "Hi", "--max-tokens", "3"]) == 0
    assert "3 tokens in" in capsys.readouterr().err


@pytest.mark.real_model
def test_generate_default_model_answers(capsys):
    assert main(["generate", "Name the capital of France.", "--max-tokens", "24"]) == 0
    out = capsys.readouterr()
    assert "Paris" in out.out and "SmolLM2-135M-Instruct on cpu (float32)" in out.err


def test_generate_with_draft_model_and_calibration_cache(tiny_qwen3_dir, tmp_path, capsys):
    args = ["generate", "Hi", "--model", str(tiny_qwen3_dir), "--max-tokens", "6", "--cache-dir", str(tmp_path)]
    assert main(args + ["--draft-model", str(tiny_qwen3_dir), "--speculative-method", "draft", "--num-draft-tokens", "3"]) == 0
    err = capsys.readouterr().err
    assert "6 tokens in" in err and "drafts accepted" in err
    assert main(args + ["--speculative-method", "auto"]) == 0  # calibrates and caches the cost curve
    assert (tmp_path / "calibration.json").exists()


def test_serve_starts_loads_and_answers(tiny_qwen3_dir, tmp_path):
    """`kakeya serve` as users run it: a real process, 503 while loading, then 200 and a completion."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from http_server import free_port

    port, grpc_port = free_port(), free_port()
    env = dict(os.environ, KAKEYA_API_KEYS="k1,k2", KAKEYA_CACHE_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_engine", "serve", "--model", str(tiny_qwen3_dir), "--port", str(port),
         "--api-key", "k3", "--speculative-method", "ngram", "--grpc-port", str(grpc_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url, status = f"http://127.0.0.1:{port}", None
        deadline = time.time() + 120
        while time.time() < deadline and status != 200:
            try:
                status = httpx.get(url + "/healthz").status_code
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert status == 200
        h = {"Authorization": "Bearer k2"}
        r = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, headers=h, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k3"}).status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 401
        # the gRPC edge beside it: health is public, the runtime takes the same keys
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from inference_engine.rpc.pb.kakeya.v1 import runtime_pb2, runtime_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            sid = stub.CreateSession(runtime_pb2.CreateSessionRequest(), metadata=(("authorization", "Bearer k1"),)).session_id
            assert sid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_eager_flag_gives_the_same_greedy_text(tiny_qwen3_dir, capsys):
    args = ["generate", "Hello there", "--model", str(tiny_qwen3_dir), "--device", "cpu", "--max-tokens", "12",
            "--speculative-method", "none"]
    assert main(args) == 0
    fast = capsys.readouterr().out
    assert main(args + ["--eager"]) == 0
    assert capsys.readouterr().out == fast and fast.strip()


def test_bench_hands_its_options_to_the_suite(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: kakeya bench" in out and "--short" in out and "--only" in out


@pytest.mark.ray
def test_cluster_starts_serves_and_stops(tiny_qwen3_dir, tmp_path):
    """`kakeya cluster` as users run it: its own local Ray, the same API with keys, SIGTERM exits 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from http_server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_engine", "cluster", "--replicas", "1", "--model", str(tiny_qwen3_dir),
         "--port", str(port), "--grpc-port", "0", "--api-key", "k1", "--speculative-method", "none"],
        env=dict(os.environ, KAKEYA_CACHE_DIR=str(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, health = f"http://127.0.0.1:{port}", {}
        deadline = time.time() + 180
        while time.time() < deadline and not health.get("replicas"):
            try:
                health = httpx.get(url + "/healthz", timeout=10).json()
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.5)
        assert health["status"] == "ok" and len(health["replicas"]) == 1, health
        r = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=60,
                       headers={"Authorization": "Bearer k1"})
        assert r.status_code == 200 and r.headers["x-kakeya-replica"] == health["replicas"][0]["id"]
        assert httpx.post(url + "/v1/completions", json={"prompt": "Hi"}).status_code == 401
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(120)
        assert rc == 0, proc.stdout.read()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
