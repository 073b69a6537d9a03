// The committed stubs (src/gen) are what protoc-gen-es makes of proto/ now: regenerate and compare.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const SDK = fileURLToPath(new URL("..", import.meta.url));
const REPO = join(SDK, "../..");

test("src/gen matches proto/kakeya/v1/runtime.proto", () => {
  const out = mkdtempSync(join(tmpdir(), "kakeya-ts-gen-"));
  execFileSync(join(REPO, ".venv/bin/python"), ["-m", "grpc_tools.protoc", `-I${join(REPO, "proto")}`,
    `--plugin=protoc-gen-es=${join(SDK, "node_modules/.bin/protoc-gen-es")}`, `--es_out=${out}`, "--es_opt=target=ts",
    join(REPO, "proto/kakeya/v1/runtime.proto")]);
  const rel = "kakeya/v1/runtime_pb.ts";
  assert.equal(readFileSync(join(SDK, "src/gen", rel), "utf8"), readFileSync(join(out, rel), "utf8"),
    "stale stubs: run `npm run gen` in sdks/typescript");
});
