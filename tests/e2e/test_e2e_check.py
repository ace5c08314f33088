"""The README's end-to-end promise, run by the scripted check against real processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import Proc

pytestmark = pytest.mark.e2e


def test_scripted_end_to_end_check_passes(
    web_server: str, worker: Proc, seeded: dict[str, str]
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "e2e_check.py"),
            "--url",
            web_server,
            "--database-url",
            seeded["DATABASE_URL"],
            "--timeout",
            "120",
        ],
        env=seeded,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"{result.stdout}\n{result.stderr}\n--- worker log ---\n{worker.log()[-4000:]}"
    )
    assert "E2E CHECK PASSED" in result.stdout
    # The fan-out really ran in the worker, in several batches.
    assert "delivery.fan_out_batch" in worker.log()
