// The real Kakeya server (`kakeya serve`, the default SmolLM2 model) on free 127.0.0.1 ports, for
// the SDK's tests: no stand-in for the server, as in the Python SDK's tests.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

const REPO = fileURLToPath(new URL("../../..", import.meta.url));

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export async function startServer({ key = "ts-sdk-key", timeoutMs = 240_000 } = {}) {
  const [port, grpcPort] = [await freePort(), await freePort()];
  const proc = spawn(`${REPO}/.venv/bin/kakeya`, ["serve", "--port", String(port), "--grpc-port", String(grpcPort),
    "--api-key", key, "--speculative-method", "none"], {
    cwd: REPO, stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, HF_HUB_OFFLINE: "1", TOKENIZERS_PARALLELISM: "false" },
  });
  let log = "";
  proc.stderr.on("data", (d) => { log = (log + d).slice(-4000); });
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`kakeya serve exited ${proc.exitCode}:\n${log}`);
    try {
      if ((await fetch(`http://127.0.0.1:${port}/healthz`)).status === 200) break;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 250));
  }
  if (Date.now() >= deadline) {
    proc.kill("SIGKILL");
    throw new Error(`kakeya serve did not become healthy:\n${log}`);
  }
  return {
    key, grpcTarget: `127.0.0.1:${grpcPort}`,
    stop: () => new Promise((resolve) => { proc.once("exit", resolve); proc.kill("SIGTERM"); }),
  };
}
