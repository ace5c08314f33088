"""`make bench` at a tiny size: the runner starts the real processes, measures every approach and
writes latest.json with every key the README quotes — into a temporary folder, never over the
committed results."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_db_name

pytestmark = pytest.mark.e2e


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("*"))
        if p.is_file()
    }


def test_bench_runner_writes_every_key(tmp_path: Path) -> None:
    from bench.run import REQUIRED_KEYS

    committed = ROOT / "bench" / "results"
    before = _digest(committed) if committed.exists() else {}
    out = tmp_path / "results"
    env = dict(
        os.environ,
        BENCH_DB_PREFIX=run_db_name("bench"),
        BENCH_SQLITE_DIR=str(tmp_path / "sqlite"),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--size",
            "2000",
            "--naive-size",
            "500",
            "--postman-max",
            "200",
            "--postman-budget",
            "30",
            "--repeats",
            "3",
            "--fresh",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "latest.json").read_text())
    missing = [k for k in REQUIRED_KEYS if k not in res]
    assert not missing
    for key in REQUIRED_KEYS:
        assert res[key] is not None, key
    assert res["size"] == 2000 and res["naive_size"] == 500
    # Every approach wrote the same recipients: everyone active but the sender.
    assert res["floor_rows"] == res["ours_detail"]["rows"] == res["sqlite_rows"]
    assert res["naive_rows"] > 0 and res["postman_size"] == 200
    assert res["floor_s"] > 0 and res["ours_s"] > 0 and res["worker_peak_rss_mb"] > 0
    assert res["inbox_user_conversations"] >= 10_000
    assert (out / "latest.md").read_text().startswith("# Fan-out benchmark")
    assert (out / "latest.png").read_bytes()[:4] == b"\x89PNG"
    after = _digest(committed) if committed.exists() else {}
    assert after == before, "the smoke run changed the committed results"
