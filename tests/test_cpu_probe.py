"""The onnxruntime CPU probe (`jobbert_onnx.cpu_probe`) and the CLI's gate on it.

Fake `onnxruntime` packages first on PYTHONPATH stand for a wheel that this CPU cannot run: one that
kills its process with SIGILL on import (what an ARMv8.2 build does on a Raspberry Pi 4), one that
segfaults, one whose import fails, one that gives wrong numbers and one that hangs.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import platform
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from jobbert_onnx import cpu_probe
from jobbert_onnx.cpu_probe import PROBE_ENV, check_onnxruntime_runs, probe_wanted
from jobbert_onnx.runtime.errors import JobbertOnnxError, ProviderError

FAKES = {
    "sigill": "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n",
    "sigsegv": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n",
    "import_error": "raise ImportError('libonnxruntime.so.1: cannot open shared object file')\n",
    "wrong_numbers": (
        "import numpy as np\n"
        "def set_default_logger_severity(level): pass\n"
        "class InferenceSession:\n"
        "    def __init__(self, model, providers): pass\n"
        "    def run(self, names, feeds): return [np.zeros((4, 16), np.float32)] * 2\n"
    ),
    "hangs": "import time\ntime.sleep(60)\n",
}


def fake_onnxruntime(tmp_path: Path, kind: str, version: str | None = None) -> Path:
    """A folder holding a fake `onnxruntime` package (and, with `version`, its dist-info)."""
    root = tmp_path / f"fake_{kind}"
    (root / "onnxruntime").mkdir(parents=True)
    (root / "onnxruntime" / "__init__.py").write_text(FAKES[kind])
    if version is not None:
        info = root / f"onnxruntime-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: onnxruntime\nVersion: {version}\n")
        (info / "top_level.txt").write_text("onnxruntime\n")
    return root


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch):
    """Put a folder first on this process's sys.path, which the probe hands to its child."""
    def put(folder: Path) -> Path:
        monkeypatch.syspath_prepend(str(folder))
        return folder
    return put


def env_with(folder: Path, mode: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}
    env.pop(PROBE_ENV, None)
    if mode is not None:
        env[PROBE_ENV] = mode
    return env


def cli(*args: object, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobbert_onnx.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobbert-onnx: error: "), result.stderr
    return lines[0]


# -- the probe ---------------------------------------------------------------------------------------
def test_probe_turns_sigill_into_provider_error_naming_the_build_and_the_cpu(tmp_path, on_path):
    fake = on_path(fake_onnxruntime(tmp_path, "sigill", version="1.99.0"))
    with pytest.raises(ProviderError) as caught:
        check_onnxruntime_runs()
    message = str(caught.value)
    assert "\n" not in message
    assert f"onnxruntime 1.99.0 ({fake / 'onnxruntime'})" in message  # found without importing it
    assert "killed by SIGILL (Illegal instruction)" in message
    assert "instructions that this CPU lacks" in message
    assert f"this {platform.machine()} CPU" in message
    assert "Install an onnxruntime that supports this CPU" in message
    assert isinstance(caught.value, JobbertOnnxError)


@pytest.mark.parametrize(("kind", "fragments"), [
    ("sigsegv", ["crashed with SIGSEGV (Segmentation fault)", "broken or not built for this CPU"]),
    ("import_error", ["failed: ImportError: libonnxruntime.so.1: cannot open shared object file"]),
    ("wrong_numbers", ["failed: wrong results: fp32 matmul off by"]),
])
def test_probe_names_other_failures(tmp_path, on_path, kind, fragments):
    fake = on_path(fake_onnxruntime(tmp_path, kind))
    with pytest.raises(ProviderError) as caught:
        check_onnxruntime_runs()
    message = str(caught.value)
    assert f"onnxruntime of unknown version ({fake / 'onnxruntime'}) cannot run on this" in message
    assert "SIGILL" not in message
    for fragment in fragments:
        assert fragment in message


PI_4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

GRAVITON_3_FEATURES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
                       "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp "
                       "svei8mm svebf16 i8mm bf16 dgh rng")


def test_cpu_description_names_the_board_its_features_and_a_missing_dot_product(tmp_path):
    (tmp_path / "pi").write_text(PI_4_CPUINFO)
    assert cpu_probe._cpu_description(str(tmp_path / "pi"), "aarch64") == (
        "aarch64 CPU (Raspberry Pi 4 Model B Rev 1.4; features: fp asimd evtstrm crc32 cpuid; no asimddp: no "
        "dot-product instructions, like ARMv8.0 cores such as the Raspberry Pi 4's Cortex-A72)")
    (tmp_path / "graviton").write_text(f"processor\t: 0\nFeatures\t: {GRAVITON_3_FEATURES}\n")
    assert cpu_probe._cpu_description(str(tmp_path / "graviton"), "aarch64") == (  # long: the vector sets only
        "aarch64 CPU (features: asimd asimdhp asimdrdm asimddp sve asimdfhm svei8mm svebf16 i8mm bf16 ...)")
    assert cpu_probe._cpu_description(str(tmp_path / "none"), "arm64") == "arm64 CPU"  # macOS: no /proc/cpuinfo


def test_probe_gives_up_after_the_timeout(tmp_path, on_path):
    on_path(fake_onnxruntime(tmp_path, "hangs"))
    with pytest.raises(ProviderError, match=rf"within 1 s on this .*{PROBE_ENV}=never to skip"):
        check_onnxruntime_runs(timeout=1)


def test_probe_names_a_python_it_cannot_start(tmp_path):
    with pytest.raises(ProviderError, match="cannot start .*no-python"):
        check_onnxruntime_runs(python=str(tmp_path / "no-python"))


def test_probe_passes_with_the_real_onnxruntime():
    which = check_onnxruntime_runs()
    folder = Path(importlib.util.find_spec("onnxruntime").origin).parent
    assert which == f"onnxruntime {metadata.version('onnxruntime')} ({folder})"


def test_module_prints_ok_or_the_error(tmp_path):
    run = [sys.executable, "-m", "jobbert_onnx.cpu_probe"]
    ok = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: onnxruntime "), ok.stderr
    bad = subprocess.run(run, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env=env_with(fake_onnxruntime(tmp_path, "sigill"), None))
    assert "SIGILL" in one_error_line(bad)


def test_probe_model_is_the_one_build_probe_model_makes():
    """The bytes in cpu_probe are this model (how they were made; rerun and paste to change it)."""
    onnx = pytest.importorskip("onnx")
    assert onnx.ModelProto.FromString(base64.b64decode(cpu_probe._PROBE_MODEL)) == build_probe_model()


def build_probe_model():
    """x [4, 16] -> y = x @ float(wq) (MatMul), z = DynamicQuantizeLinear(y) @ wq * w_scale (MatMulIntegerToFloat).

    |wq| <= 64 keeps pairs of uint8 x int8 products within int16, as AVX2 without VNNI needs.
    `base64.b64encode(build_probe_model().SerializeToString())` is `cpu_probe._PROBE_MODEL`.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    k = np.arange(16)
    wq = ((k[:, None] * 11 + k[None, :] * 7) % 129 - 64).astype(np.int8)
    w_scale = (0.01 * (1 + k % 3)).astype(np.float32)
    nodes = [
        helper.make_node("Cast", ["wq"], ["w"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
        helper.make_node("DynamicQuantizeLinear", ["y"], ["y_q", "y_scale", "y_zero"]),
        helper.make_node("MatMulIntegerToFloat", ["y_q", "wq", "y_scale", "w_scale", "y_zero"], ["z"],
                         domain="com.microsoft"),
    ]
    graph = helper.make_graph(
        nodes, "cpu_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 16])],
        [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(w_scale, "w_scale")])
    return helper.make_model(graph, ir_version=8, producer_name="jobbert-onnx cpu_probe",
                             opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


# -- when the CLI probes -----------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "machine", "wanted"), [
    (None, "aarch64", True), ("", "arm64", True), ("auto", "armv7l", True), ("AUTO", "ARM64", True),
    (None, "x86_64", False), ("auto", "AMD64", False),
    ("always", "x86_64", True), (" Always ", "AMD64", True),
    ("never", "aarch64", False), ("never", "x86_64", False),
])
def test_probe_wanted(monkeypatch, mode, machine, wanted):
    monkeypatch.delenv(PROBE_ENV, raising=False)
    if mode is not None:
        monkeypatch.setenv(PROBE_ENV, mode)
    assert probe_wanted(machine=machine) is wanted
    assert probe_wanted(mode or "auto", machine) is wanted


def test_probe_wanted_refuses_an_unknown_mode():
    with pytest.raises(JobbertOnnxError, match=rf"{PROBE_ENV}='sometimes': use one of auto, always, never"):
        probe_wanted("sometimes", "aarch64")


def test_importing_the_cli_loads_no_onnxruntime(tmp_path):
    """The fake kills any process that imports it: these imports must not."""
    code = ("import sys, jobbert_onnx, jobbert_onnx.runtime, jobbert_onnx.runtime.errors, jobbert_onnx.cli\n"
            "loaded = [m for m in ('onnxruntime', 'numpy') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env=env_with(fake_onnxruntime(tmp_path, "sigill"), None), timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr)


def test_cli_prints_one_error_line_instead_of_dying(tmp_path):
    fake = fake_onnxruntime(tmp_path, "sigill", version="1.99.0")
    line = one_error_line(cli("info", tmp_path / "missing", env=env_with(fake, "always"), cwd=tmp_path))
    assert "SIGILL (Illegal instruction)" in line and f"{fake / 'onnxruntime'}" in line
    assert "missing" not in line  # the probe ran before the command
    # The same command's own error when the probe is skipped (info reads only the manifest).
    skipped = one_error_line(cli("info", tmp_path / "missing", env=env_with(fake, "never"), cwd=tmp_path))
    assert "SIGILL" not in skipped and "missing" in skipped


def test_cli_refuses_an_unknown_probe_mode(tmp_path):
    line = one_error_line(cli("info", tmp_path / "missing", env=env_with(tmp_path, "maybe"), cwd=tmp_path))
    assert f"{PROBE_ENV}='maybe'" in line


@pytest.mark.parametrize("mode", ["never", "auto"])
def test_without_the_probe_the_fake_kills_the_cli(tmp_path, mode):
    """Proves the gate is real: a command that imports onnxruntime dies by SIGILL where no probe runs."""
    fake = fake_onnxruntime(tmp_path, "sigill")
    result = cli("embed", tmp_path / "missing", "Software Engineer", env=env_with(fake, mode), cwd=tmp_path)
    if mode == "auto" and platform.machine().lower() not in cpu_probe.X86_64_MACHINES:
        assert "SIGILL" in one_error_line(result)  # auto probes on this machine
    else:
        assert result.returncode == -signal.SIGILL, (result.returncode, result.stderr)
