"""Robustness against a real `kakeya serve` process on 127.0.0.1 (tiny Qwen3): clients that leave at
every phase, races on one session, SIGTERM with work in flight, a model that fails to load."""
from __future__ import annotations

import json
import signal
import socket
import threading
import time

import grpc
import httpx
import pytest

from inference_engine.rpc.pb.kakeya.v1 import runtime_pb2 as pb
from inference_engine.rpc.pb.kakeya.v1 import runtime_pb2_grpc as pb_grpc
from serve_process import ServeProcess, metric

LONG = {"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True, "temperature": 0}
STEPS = "kakeya_spec_decode_num_verify_steps_total"
AFTER_LEAVING = 300  # verify steps a request may still take after its client left (a full run is 1000)


@pytest.fixture(scope="module")
def server(tiny_qwen3_dir):
    # one decoding slot, so a second request is really queued; plain decoding: one token per step
    with ServeProcess(str(tiny_qwen3_dir), "--max-running", "1", "--speculative-method", "none") as s:
        yield s


def _idle(url: str, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metric(url, "kakeya_num_requests_running") == 0 and metric(url, "kakeya_num_requests_waiting") == 0:
            return True
        time.sleep(0.05)
    return False


def _raw_post(port: int, body: dict) -> socket.socket:
    """Send a request on a bare socket and return it: closing it is the client vanishing."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(data) + data)
    return sock


def _wait_running(url: str, n: int = 1) -> None:
    deadline = time.time() + 10
    while metric(url, "kakeya_num_requests_running") + metric(url, "kakeya_num_requests_waiting") < n:
        assert time.time() < deadline, "the request never reached the engine"
        time.sleep(0.01)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("phase", ["at-once", "decoding", "queued"])
def test_client_leaving_stops_its_work(server, phase, stream):
    url = server.url
    assert _idle(url)
    blocker = None
    if phase == "queued":  # the only slot is busy: this request waits in the queue
        blocker = _raw_post(server.port, {**LONG, "stream": True})
        _wait_running(url)
    before = metric(url, STEPS)
    sock = _raw_post(server.port, {**LONG, "stream": stream})
    if phase == "decoding":
        if stream:
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # headers and first chunks: decoding
        else:
            _wait_running(url)
        time.sleep(0.2)
    elif phase == "queued":
        deadline = time.time() + 10
        while metric(url, "kakeya_num_requests_waiting") < 1:
            assert time.time() < deadline
            time.sleep(0.01)
    sock.close()
    left = metric(url, STEPS)
    if blocker is not None:  # the queued request left the queue without ever running
        deadline = time.time() + 5
        while metric(url, "kakeya_num_requests_waiting") > 0:
            assert time.time() < deadline, "a queued request outlived its client"
            time.sleep(0.02)
        blocker.close()
    assert _idle(url), "work kept running after every client left"
    after = metric(url, STEPS)
    assert after - left <= AFTER_LEAVING and after - before < 900
    assert httpx.get(url + "/healthz").status_code == 200
    if phase != "at-once":  # it reached the route: counted as aborted by its client
        label = 'status="200"' if stream else 'status="499"'
        aborted = [l for l in httpx.get(url + "/metrics").text.splitlines()
                   if l.startswith("kakeya_requests_total{") and 'finish_reason="abort"' in l and label in l]
        assert aborted and float(aborted[0].split()[-1]) >= 1


def test_clients_vanishing_after_headers_do_not_kill_the_engine(server):
    """The bug: three clients closing right after the SSE headers while another stream ran killed
    the engine thread (healthz 503, the other stream hung)."""
    url = server.url
    assert _idle(url)
    with httpx.stream("POST", url + "/v1/completions", json={**LONG, "max_tokens": 300, "stream": True},
                      timeout=60) as main:
        lines = main.iter_lines()
        next(lines)
        for _ in range(3):
            sock = _raw_post(server.port, {**LONG, "stream": True})
            sock.recv(64)  # the status line: headers are out
            sock.close()
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and json.loads(rest[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert httpx.get(url + "/healthz").status_code == 200 and _idle(url)


def test_two_requests_on_one_session(server):
    """Exactly one wins; the loser gets 409 before any header, streaming or not. A blocker holds the
    only decoding slot, so the winner stays admitted (queued, its session busy) while the loser arrives."""
    url = server.url
    assert _idle(url)
    blocker = _raw_post(server.port, {**LONG, "stream": True})
    _wait_running(url)
    results: list[int] = []

    def go(stream: bool) -> None:
        body = {**LONG, "max_tokens": 20, "stream": stream, "session_id": "race-1"}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            results.append(r.status_code)
            if r.status_code == 409:
                r.read()
                assert r.json()["error"]["code"] == "session_busy"
                blocker.close()  # the winner may run now
            else:
                r.read()

    threads = [threading.Thread(target=go, args=(i % 2 == 0,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [200, 409]
    assert _idle(url)
    info = httpx.get(url + "/v1/sessions/race-1").json()
    assert info["busy"] is False and info["history_length"] == 4 + 20  # the winner's turn, nothing lost


def test_sigterm_drains_then_aborts_and_exits_zero(tiny_qwen3_dir):
    with ServeProcess(str(tiny_qwen3_dir), "--shutdown-grace", "1", "--max-running", "1", "--speculative-method", "none",
                      grpc=True) as s:
        short = httpx.post(s.url + "/v1/completions", json={**LONG, "max_tokens": 2}, timeout=30)
        assert short.status_code == 200
        events: list[str] = []
        whole: list[httpx.Response] = []
        frames: list = []

        def stream() -> None:
            with httpx.stream("POST", s.url + "/v1/completions", json={**LONG, "max_tokens": 1020 - 8,
                                                                        "stream": True}, timeout=60) as r:
                events.extend(line for line in r.iter_lines() if line.startswith("data: "))

        def rpc() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}") as ch:
                stub = pb_grpc.RuntimeServiceStub(ch)
                sid = stub.CreateSession(pb.CreateSessionRequest()).session_id
                stub.AppendTokens(pb.AppendTokensRequest(session_id=sid, token_ids=[9707, 11]))
                frames.extend(stub.Generate(pb.GenerateRequest(session_id=sid, max_tokens=1000)))

        threads = [threading.Thread(target=stream), threading.Thread(target=rpc),
                   threading.Thread(target=lambda: whole.append(
                       httpx.post(s.url + "/v1/completions", json={**LONG, "max_tokens": 1000}, timeout=60)))]
        for t in threads:
            t.start()
        _wait_running(s.url, 3)
        t0 = time.time()
        s.signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.post(s.url + "/v1/completions", json={**LONG, "max_tokens": 2}, timeout=30)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert "retry against another instance" in refused.json()["error"]["message"]  # refused, not admitted
        code, out = s.wait(timeout=30)
        for t in threads:
            t.join(30)
        assert code == 0, out
        assert time.time() - t0 < 1 + 8, "exit took far longer than the grace period"
    # every client was told: the stream's last chunk says abort, then [DONE]
    assert events[-1] == "data: [DONE]" and json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "abort"
    assert whole[0].status_code == 503 and whole[0].json()["error"]["code"] == "shutting_down"
    assert frames[-1].WhichOneof("frame") == "done" and frames[-1].done.stop_reason == "abort"
    assert "grace period over: aborted" in out and "stopped" in out


def test_failed_model_load_exits_nonzero_with_the_reason(tmp_path):
    missing = tmp_path / "missing.gguf"
    with ServeProcess(str(missing), wait=False) as s:
        code, out = s.wait(timeout=60)
    assert code != 0 and "failed to load" in out and "missing.gguf" in out
