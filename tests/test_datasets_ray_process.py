"""Runs the Ray engine's tests (tests/test_datasets_ray.py, tests/test_datasets_ray_cluster.py) in a
pytest process of their own, with a deadline.

Why not in this process: a Ray driver changes the process it runs in for good. `ray.init` makes
it a process-group leader (`os.setpgrp`, for Ray's reaper), installs a SIGTERM handler, sets
environment variables (PYTHONBREAKPOINT, RAY_*), and `ray.shutdown` leaves gRPC and core-worker
threads running. A full test run once stalled in a torch test 160 tests after the Ray tests had
passed. In a child process none of that reaches the other tests, and a stuck Ray job costs at
most `DEADLINE_S`: the child's whole process group (pytest, Ray's GCS, raylets and workers) is
killed, and pytest's faulthandler has printed every thread's stack by then.

The child also gets its own RAY_TMPDIR, so it never joins another Ray instance on the machine
(`ray.init()` connects to the cluster named in /tmp/ray/ray_current_cluster, which
`ray.cluster_utils.Cluster` writes), and no RAY_ADDRESS.

To run the Ray tests directly: `JOBBERT_ONNX_RAY_TESTS=child pytest tests/test_datasets_ray.py`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
MODULES = ["tests/test_datasets_ray.py", "tests/test_datasets_ray_cluster.py"]
DEADLINE_S = 600  # about 110 s on an idle 2-core machine
STACKS_AFTER_S = 240  # a test stuck this long prints every thread's stack (pytest's faulthandler)

pytestmark = pytest.mark.slow


def test_ray_engine_tests_pass_in_their_own_process() -> None:
    # short: Ray's Unix sockets live under it, and their paths must stay under 108 bytes
    ray_tmp = tempfile.mkdtemp(prefix="jbray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(JOBBERT_ONNX_RAY_TESTS="child", RAY_TMPDIR=ray_tmp)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
               f"faulthandler_timeout={STACKS_AFTER_S}", "-rfEs", *MODULES]
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        output, _ = child.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        pytest.fail(f"the Ray tests did not finish in {DEADLINE_S} s; killed. Their output:\n{output[-20000:]}")
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert child.returncode == 0, output[-20000:]
    summary = output.strip().splitlines()[-1]
    # every test ran and passed: none skipped (e.g. the child not seeing JOBBERT_ONNX_RAY_TESTS)
    assert re.fullmatch(r"=* ?\d+ passed(, \d+ warnings?)? in .*", summary), output[-20000:]
