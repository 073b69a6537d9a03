#!/usr/bin/env bash
# Generate the protobuf/gRPC stubs from proto/ into the server (inference_engine/rpc/pb) and the SDK
# (sdks/python/kakeya/_pb). The generated files are committed; tests/test_proto.py fails if they drift.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
for out in inference_engine/rpc/pb sdks/python/kakeya/_pb; do
  mkdir -p "$out"
  "$PY" -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" proto/kakeya/v1/runtime.proto
  # protoc writes absolute imports (`from kakeya.v1 import ...`); make them package-relative
  sed -i.bak 's/^from kakeya\.v1 import/from . import/' "$out/kakeya/v1/runtime_pb2_grpc.py" && rm -f "$out/kakeya/v1/"*.bak
  touch "$out/__init__.py" "$out/kakeya/__init__.py" "$out/kakeya/v1/__init__.py"
done
