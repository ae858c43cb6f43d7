"""Does the installed onnxruntime run on this CPU? Asked in a child process, so that a crash kills the child.

An onnxruntime build made for a newer CPU than this one (on ARM64 edge devices, e.g. one that uses the
ARMv8.2 dot-product instructions on a Raspberry Pi 4, whose Cortex-A72 is ARMv8.0) is killed by SIGILL
("Illegal instruction") as soon as it runs such an instruction, and no Python code can catch that.
`check_onnxruntime_runs` runs `python -c <probe>` instead: the child imports onnxruntime, creates a
session on a tiny model and runs it once; when the child is killed by a signal or fails, the parent
raises `ProviderError` with one line that says which onnxruntime, which signal, which CPU, and what to do.

The tiny model (`_PROBE_MODEL`, 653 bytes) runs what an artifact's encoder runs on the CPU: an fp32
`MatMul`, `DynamicQuantizeLinear` and com.microsoft `MatMulIntegerToFloat` (uint8 x int8, the int8
encoder's matmul). It was serialized with the `onnx` package by `build_probe_model` in
tests/test_cpu_probe.py, which checks that these bytes are that model; the child checks the outputs too.

Importing this module imports neither onnxruntime nor numpy (stdlib only), and neither does importing
`jobbert_onnx`, `jobbert_onnx.runtime` or `jobbert_onnx.cli`. The CLI runs the probe before every
command where prebuilt wheels are the risk, that is on CPUs other than x86-64 (`probe_wanted`);
`JOBBERT_ONNX_CPU_PROBE=always|never` overrides that. `python -m jobbert_onnx.cpu_probe` runs it once
and prints OK or the error (exit status 1).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys

from jobbert_onnx.runtime.errors import JobbertOnnxError, ProviderError

PROBE_ENV = "JOBBERT_ONNX_CPU_PROBE"
"""The environment variable that decides when the CLI probes: auto (the default), always or never."""

PROBE_MODES = ("auto", "always", "never")

X86_64_MACHINES = frozenset({"x86_64", "amd64"})
"""`platform.machine()` values (lowercased) that `auto` does not probe: the builds reported to die with
SIGILL (on a Raspberry Pi 4) are ARM builds, and x86-64 is where wheels are built and tested most."""

_PROBE_MODEL = (
    "CAgSFmpvYmJlcnQtb25ueCBjcHVfcHJvYmU61wQKGAoCd3ESAXciBENhc3QqCQoCdG8YAaABAgoRCgF4CgF3EgF5IgZNYXRNdWwKMAoBeRID"
    "eV9xEgd5X3NjYWxlEgZ5X3plcm8iFUR5bmFtaWNRdWFudGl6ZUxpbmVhcgpLCgN5X3EKAndxCgd5X3NjYWxlCgd3X3NjYWxlCgZ5X3plcm8S"
    "AXoiFE1hdE11bEludGVnZXJUb0Zsb2F0Og1jb20ubWljcm9zb2Z0EgljcHVfcHJvYmUqjQIIEAgQEANCAndxSoACwMfO1dzj6vH4/wYNFBsi"
    "KcvS2eDn7vX8AwoRGB8mLTTW3eTr8vkABw4VHCMqMTg/4ejv9v0ECxIZICcuNTzCyezz+gEIDxYdJCsyOUDGzdT3/gUMExohKC82PcPK0djf"
    "AgkQFx4lLDM6wMfO1dzj6g0UGyIpMDc+xMvS2eDn7vUYHyYtNDvByM/W3eTr8vkAIyoxOD/FzNPa4ejv9v0ECy41PMLJ0Nfe5ezz+gEIDxY5"
    "QMbN1Nvi6fD3/gUMExohw8rR2N/m7fT7AgkQFx4lLM7V3OPq8fj/Bg0UGyIpMDfZ4Ofu9fwDChEYHyYtNDvB5Ovy+QAHDhUcIyoxOD/FzCpP"
    "CBAQAUIHd19zY2FsZUpACtcjPArXozyPwvU8CtcjPArXozyPwvU8CtcjPArXozyPwvU8CtcjPArXozyPwvU8CtcjPArXozyPwvU8CtcjPFoT"
    "CgF4Eg4KDAgBEggKAggECgIIEGITCgF5Eg4KDAgBEggKAggECgIIEGITCgF6Eg4KDAgBEggKAggECgIIEEIECgAQEUIRCg1jb20ubWljcm9z"
    "b2Z0EAE="
)
"""The probe's model, base64 (see the module docstring): x [4, 16] -> y = x @ float(wq), z = int8 y @ wq * w_scale."""

# The child. First it says which onnxruntime it is about to import (its folder and the distributions
# that installed it) without importing it, so that the parent can name it even when the import
# kills the child; then it imports onnxruntime, runs the model and checks the outputs.
_CHILD = r"""
import base64, json, os, sys
from importlib import metadata, util
if PARENT_PATH is not None:
    sys.path[:] = PARENT_PATH  # import what the parent would import, not what the child's cwd holds
spec = util.find_spec("onnxruntime")
folder = os.path.dirname(spec.origin) if spec is not None and spec.origin else None
dists = []
try:
    for dist in metadata.distributions(path=[os.path.dirname(folder)] if folder else []):
        if "onnxruntime" in (dist.read_text("top_level.txt") or "").split():
            dists.append(f"{dist.metadata['Name']} {dist.version}")
except Exception:
    pass
print(json.dumps({"folder": folder, "dists": sorted(dists)}), flush=True)

import numpy as np
import onnxruntime as ort

ort.set_default_logger_severity(3)
session = ort.InferenceSession(base64.b64decode(MODEL), providers=["CPUExecutionProvider"])
i, k = np.arange(4)[:, None], np.arange(16)[None, :]
x = ((i * 7 + k * 3) % 11 - 5).astype(np.float32) / 4
y, z = session.run(None, {"x": x})
wq = ((k.T * 11 + k * 7) % 129 - 64).astype(np.float64)
y_ref = x.astype(np.float64) @ wq
z_ref = y_ref @ (wq * (0.01 * (1 + k % 3)))
# int8 error: each of the 16 terms is off by at most half a step of y's uint8 scale times |w|.
z_bound = 16 * (max(y_ref.max(), 0) - min(y_ref.min(), 0)) / 255 / 2 * np.abs(wq * 0.03).max()
if not (np.allclose(y, y_ref, rtol=1e-5, atol=1e-3) and np.abs(z - z_ref).max() <= z_bound):
    sys.exit(f"wrong results: fp32 matmul off by {np.abs(y - y_ref).max():.3g}, "
             f"int8 matmul by {np.abs(z - z_ref).max():.3g} (allowed {z_bound:.3g})")
print("ok", flush=True)
"""

_WINDOWS_CRASHES = {0xC000001D: "STATUS_ILLEGAL_INSTRUCTION", 0xC0000005: "STATUS_ACCESS_VIOLATION"}
"""Windows reports a crash as an exit status, not a signal."""


_VECTOR_FEATURES = ("sse4", "avx", "amx", "fma", "f16c", "asimd", "sve", "i8mm", "bf16", "neon", "vfp")


def probe_wanted(mode: str | None = None, machine: str | None = None) -> bool:
    """Whether the CLI should run the probe: `mode` (default: `$JOBBERT_ONNX_CPU_PROBE`, else `auto`)
    is `always`, or `auto` on a `machine` (default: `platform.machine()`) that is not x86-64.

    Raises `JobbertOnnxError` for a mode that is none of auto, always, never.
    """
    if mode is None:
        mode = os.environ.get(PROBE_ENV, "")
    mode = mode.strip().lower() or "auto"
    if mode not in PROBE_MODES:
        raise JobbertOnnxError(f"{PROBE_ENV}={mode!r}: use one of {', '.join(PROBE_MODES)}.")
    if mode != "auto":
        return mode == "always"
    return (platform.machine() if machine is None else machine).lower() not in X86_64_MACHINES


def _cpu_description(cpuinfo_path: str = "/proc/cpuinfo", machine: str | None = None) -> str:
    """`aarch64 CPU (Raspberry Pi 4 Model B Rev 1.4; features: fp asimd ...)`: the machine, and on Linux
    the model and the `Features`/`flags` line of /proc/cpuinfo, shortened."""
    machine = platform.machine() if machine is None else machine
    details = []
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            fields: dict[str, str] = {}
            for line in cpuinfo:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        fields = {}
    model = fields.get("model name") or fields.get("model", "")
    if model and not model.isdigit():  # x86's `model` is a number
        details.append(model)
    features = (fields.get("features") or fields.get("flags") or "").split()
    if features:
        if len(" ".join(features)) > 120:  # x86's flags: keep the vector instruction sets, which builds differ in
            features = [f for f in features if f.startswith(_VECTOR_FEATURES)] + ["..."]
        details.append("features: " + " ".join(features))
        if machine.lower() in {"aarch64", "arm64"} and "asimddp" not in features:
            details.append("no asimddp: no dot-product instructions, like ARMv8.0 cores such as the Raspberry Pi 4's "
                           "Cortex-A72")
    return f"{machine or 'unknown'} CPU" + (f" ({'; '.join(details)})" if details else "")


def check_onnxruntime_runs(python: str = sys.executable, timeout: float = 60) -> str:
    """Check, in a child process `python -c ...`, that onnxruntime imports and runs a tiny fp32 and
    int8 model on this CPU with the CPU execution provider, and gives the right numbers.

    Costs one Python start plus importing onnxruntime and numpy in it: median 0.3 s on a quiet
    2-core x86-64 server (AMD EPYC, onnxruntime 1.32; not measured on ARM boards). For
    `python == sys.executable` the child imports with this process's `sys.path`, so it tests the
    onnxruntime that this process would import.

    Returns what ran, e.g. "onnxruntime 1.32.0 (.../site-packages/onnxruntime)". Raises `ProviderError`
    with one actionable line when the child is killed by a signal (SIGILL: the build uses instructions
    this CPU lacks; SIGSEGV, SIGBUS ...), exits with an error, gives wrong results or exceeds `timeout`
    seconds.
    """
    parent_path = list(sys.path) if python == sys.executable else None
    code = f"PARENT_PATH = {parent_path!r}\nMODEL = {_PROBE_MODEL!r}\n{_CHILD}"
    try:
        child = subprocess.run([python, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        which = _which(exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout)
        raise ProviderError(f"{which} did not import and run a tiny model within {timeout:g} s on this "
                            f"{_cpu_description()}; set {PROBE_ENV}=never to skip this check.") from None
    except OSError as exc:
        raise ProviderError(f"cannot start {python} to check onnxruntime: {exc}.") from None
    which = _which(child.stdout)
    if child.returncode == 0 and child.stdout.rstrip().endswith("ok"):
        return which
    crash = _crash_name(child.returncode)
    if crash is not None and crash.startswith(("SIGILL", "STATUS_ILLEGAL")):
        outcome = f"was killed by {crash}: this build uses instructions that this CPU lacks"
    elif crash is not None:
        outcome = f"crashed with {crash}: the install is broken or not built for this CPU"
    else:
        last = child.stderr.strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
        outcome = f"failed: {last[0][:300]}"
    raise ProviderError(
        f"{which} cannot run on this {_cpu_description()}: a child process that imports it and runs a tiny model "
        f"{outcome}. Install an onnxruntime that supports this CPU (another release, 1.20.1 or newer, or one "
        f"built from source for it) and check it with `{python} -m jobbert_onnx.cpu_probe`.")


def _which(stdout: str | None) -> str:
    """'onnxruntime 1.32.0 (/path/onnxruntime)' from the child's first line ('onnxruntime' if it has none)."""
    try:
        found = json.loads((stdout or "").splitlines()[0])
    except (IndexError, ValueError):
        return "onnxruntime"
    if not found.get("folder"):
        return "onnxruntime (not installed)"
    dists = " + ".join(found.get("dists") or ["onnxruntime of unknown version"])
    return f"{dists} ({found['folder']})"


def _crash_name(returncode: int) -> str | None:
    """'SIGILL (Illegal instruction)' for a child killed by a signal, or Windows' name for a crash; else None."""
    if returncode < 0:
        try:
            number = signal.Signals(-returncode)
        except ValueError:
            return f"signal {-returncode}"
        description = signal.strsignal(number)
        return f"{number.name} ({description})" if description else number.name
    return _WINDOWS_CRASHES.get(returncode & 0xFFFFFFFF) if sys.platform == "win32" else None


def main() -> int:
    """`python -m jobbert_onnx.cpu_probe`: print OK and what ran, or the error (exit status 1)."""
    try:
        which = check_onnxruntime_runs()
    except JobbertOnnxError as exc:
        print(f"jobbert-onnx: error: {exc}", file=sys.stderr)
        return 1
    print(f"OK: {which} runs a tiny fp32 and int8 model on this {_cpu_description()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
