"""The committed gRPC stubs are exactly what scripts/gen_proto.sh generates from proto/."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ("runtime_pb2.py", "runtime_pb2.pyi", "runtime_pb2_grpc.py")


def test_stubs_match_the_proto(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gen_proto.sh", tmp_path / "scripts")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    subprocess.run(["bash", "scripts/gen_proto.sh"], cwd=tmp_path, check=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    for out in ("inference_engine/rpc/pb", "sdks/python/kakeya/_pb"):
        for name in GENERATED:
            fresh = (tmp_path / out / "kakeya/v1" / name).read_text()
            assert fresh == (ROOT / out / "kakeya/v1" / name).read_text(), f"{out}/{name} is stale: run scripts/gen_proto.sh"
