"""The runtime on ARM64 under qemu user-mode emulation: artifacts made on x86, embedded by an
aarch64 Python on an emulated Cortex-A72 (Raspberry Pi 4: ARMv8.0, no dot product) and
Neoverse-N1 (AWS Graviton2: dot product), compared with x86.

The aarch64 side is built from Debian's and PyPI's ordinary clients, inside one work folder,
without binfmt_misc or chroot (so nothing on the host changes):

* `debootstrap --foreign --variant=minbase --include=python3` downloads Debian's arm64 packages
  for python3 and unpacks the base; the rest are unpacked with `dpkg-deb -x`.
* onnxruntime, numpy and tokenizers: their aarch64 wheels from PyPI, at the versions installed
  here, by this Python's pip (`--platform manylinux2014_aarch64 --only-binary :all: --target`);
  this package too (`--no-deps`).
* `qemu-aarch64-static -L ROOT` runs ROOT's python3; qemu looks absolute paths up in ROOT
  first. ROOT holds a /proc/cpuinfo and /sys/devices/system/cpu/{possible,present} written for
  the emulated CPU model: onnxruntime's cpuinfo reads them (on the host's x86 /proc/cpuinfo it
  crashes), and the dot-product kernels follow the model's HWCAP, which qemu sets.

Which int8 kernels ran is read from qemu's log of the code it translated: SDOT/UDOT
instructions appear on Neoverse-N1 and never on Cortex-A72 (`dot_instructions`).

    python -m bench.arm64 --data ../shared/data/job-title-similarity   # bench/results/arm64.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EMBED_SCRIPT = HERE / "arm64_embed.py"
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
WHEELS = ("onnxruntime", "numpy", "tokenizers", "tqdm")
QEMU = "qemu-aarch64-static"
UNPADDED = "int8, attention rows unpadded (control)"
PROBES, BATCH = 16, 8  # bench.measure's 100 probes in batches of 32 would take hours emulated
# What runs emulated, per model: MPNet's fp32 takes about an hour per CPU model under qemu (its
# x86 fp32 is still the reference of the int8 rows); MiniLM's shows fp32 on both.
EMULATED = {"minilm": ("fp32", "int8", UNPADDED), "mpnet": ("int8", UNPADDED)}

# /proc/cpuinfo as the Linux kernel writes it on each core (two of them, as on this machine).
_FEATURES_A72 = "fp asimd evtstrm crc32 cpuid"
_FEATURES_N1 = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                "asimddp ssbs")
CPU_MODELS = {  # qemu's -cpu name -> (Features, CPU variant, CPU part, CPU revision)
    "cortex-a72": (_FEATURES_A72, "0x0", "0xd08", "3"),
    "neoverse-n1": (_FEATURES_N1, "0x3", "0xd0c", "1"),
}


class Arm64Unavailable(RuntimeError):
    """The emulator or the aarch64 packages could not be installed here."""


def _cpuinfo(model: str, cores: int = 2) -> str:
    features, variant, part, revision = CPU_MODELS[model]
    return "".join(f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                   f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n"
                   for i in range(cores))


def _run_quietly(command: list[str], what: str, timeout: float = 900) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Arm64Unavailable(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise Arm64Unavailable(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout)[-600:]}")


@dataclass(frozen=True)
class Arm64Python:
    """An aarch64 python3 with the runtime, run under qemu."""

    root: Path  # Debian's arm64 python3, unpacked
    site: Path  # the aarch64 wheels
    package: Path  # this package

    @classmethod
    def build(cls, folder: Path) -> "Arm64Python":
        """Build (or reuse) the aarch64 side in `folder`; `Arm64Unavailable` when a tool or a
        download is missing, with the reason."""
        missing = [tool for tool in (QEMU, "debootstrap", "dpkg-deb") if shutil.which(tool) is None]
        if missing:
            raise Arm64Unavailable(f"needs {', '.join(missing)} (apt-get install qemu-user-static debootstrap)")
        env = cls(folder / "root", folder / "site", folder / "package")
        if not (env.root / "usr/bin/python3").exists():
            shutil.rmtree(env.root, ignore_errors=True)
            _run_quietly(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", "--include=python3",
                          SUITE, str(env.root), MIRROR], "debootstrap (Debian's arm64 python3)")
            for deb in sorted((env.root / "var/cache/apt/archives").glob("*.deb")):
                _run_quietly(["dpkg-deb", "-x", str(deb), str(env.root)], f"dpkg-deb -x {deb.name}")
        if not env.site.exists():
            pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
            _run_quietly([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
                          str(env.site), "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64",
                          "--python-version", env.python_version(), "--implementation", "cp", "--only-binary=:all:",
                          *pins], "pip (aarch64 wheels)")
        shutil.rmtree(env.package, ignore_errors=True)
        _run_quietly([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                      "--no-build-isolation", "--target", str(env.package), str(HERE.parent)], "pip (this package)")
        (env.root / "sys/devices/system/cpu").mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present"):
            (env.root / "sys/devices/system/cpu" / name).write_text("0-1\n")
        return env

    def python_version(self) -> str:
        """The unpacked python3's X.Y, from its file name."""
        found = sorted(p.name for p in (self.root / "usr/bin").glob("python3.*") if re.fullmatch(r"python3\.\d+", p.name))
        if not found:
            raise Arm64Unavailable(f"no python3.X in {self.root / 'usr/bin'}")
        return found[-1].removeprefix("python")

    def run(self, cpu: str, args: list[str], translation_log: Path | None = None,
            timeout: float = 1800) -> subprocess.CompletedProcess:
        """Run the aarch64 python3 with `args` on the emulated `cpu` (a `CPU_MODELS` name);
        `translation_log` keeps qemu's log of the code it translated."""
        (self.root / "proc").mkdir(exist_ok=True)
        (self.root / "proc/cpuinfo").write_text(_cpuinfo(cpu))
        log = ["-d", "in_asm", "-D", str(translation_log)] if translation_log else []
        env = {**os.environ, "QEMU_CPU": cpu,
               "PYTHONPATH": os.pathsep.join(map(str, [self.package, self.site]))}
        command = [QEMU, *log, "-L", str(self.root), str(self.root / "usr/bin/python3"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


# SDOT/UDOT, vector and by element (Arm ARM, "Advanced SIMD three same (dot product)" and
# "by element"); qemu 7.2's disassembler prints them as bytes, so they are matched by encoding.
_DOT_ENCODINGS = ((0xBFE0FC00, (0x0E809400, 0x2E809400)), (0xBFC0F400, (0x0F80E000, 0x2F80E000)))
_LOGGED_INSTRUCTION = re.compile(r"^0x[0-9a-f]+:\s+([0-9a-f]{8})\s")


def dot_instructions(translation_log: Path) -> int:
    """How many SDOT/UDOT instructions qemu translated, from its `-d in_asm` log."""
    count = 0
    with open(translation_log, errors="replace") as lines:
        for line in lines:
            found = _LOGGED_INSTRUCTION.match(line)
            if found:
                word = int(found.group(1), 16)
                count += any(word & mask in values for mask, values in _DOT_ENCODINGS)
    return count


def embed(env: Arm64Python, cpu: str, artifact: Path, titles: list[str], work: Path, probes: int = PROBES,
          batch: int = BATCH, log_translation: bool = False) -> dict:
    """`bench/arm64_embed.py` on the emulated `cpu`: the titles' embeddings ('all', batched),
    the probes' alone and each inside a batch of the longest titles ('alone', 'batched'), the
    seconds it took and, with `log_translation`, the dot-product instructions translated."""
    stem = f"{artifact.name}-{cpu}"
    titles_file, out = work / f"{stem}-titles.txt", work / f"{stem}.npz"
    titles_file.write_text("".join(f"{t}\n" for t in titles), encoding="utf-8")
    log = work / f"{stem}.qemu.log" if log_translation else None
    start = time.perf_counter()
    done = env.run(cpu, [str(EMBED_SCRIPT), str(artifact), str(titles_file), str(out), str(probes), str(batch)], log)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{stem}: exit {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    result = {"seconds": round(seconds, 1), **dict(np.load(out)),
              "report": json.loads(done.stdout.strip().splitlines()[-1])}
    if log is not None:
        result["dot_instructions"] = dot_instructions(log)
        log.unlink()
    return result


def embed_here(artifact: Path, titles: list[str], probes: int = PROBES, batch: int = BATCH) -> dict[str, np.ndarray]:
    """What `embed` returns, computed by this (x86) Python, for comparison."""
    from bench.arm64_embed import embeddings

    return embeddings(artifact, titles, probes, batch)


def _titles(data: Path, per_language: int) -> list[str]:
    from bench.workload import load_tasks

    return [title for task in load_tasks(data) for title in task.titles()[:per_language]]


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    from bench.measure import cosine_rows

    return round(float(cosine_rows(a, b).min()), 6)


def compare(arm: dict, x86: dict, x86_fp32: dict) -> dict:
    """The issue's figures for one emulated run: min cosine against x86 at the same precision and
    against x86 fp32, and batch invariance on the emulated CPU (min cosine, and whether every
    probe is bit for bit the same alone and batched)."""
    return {"vs_x86_same_precision": _min_cosine(arm["all"], x86["all"]),
            "vs_x86_fp32": _min_cosine(arm["all"], x86_fp32["all"]),
            "invariance": _min_cosine(arm["alone"], arm["batched"]),
            "invariant_bit_for_bit": bool(np.array_equal(arm["alone"], arm["batched"])),
            "x86_invariance": _min_cosine(x86["alone"], x86["batched"])}


def export_unpadded(model: Path, output: Path) -> Path:
    """`model` exported at int8 with its attention rows left unpadded (the control), unvalidated."""
    from jobbert_onnx.export import ExportConfig, Int8Options, export_model

    return export_model(ExportConfig(model=str(model), output=output, precision="int8", overwrite=True,
                                     validate=False, show_progress=False,
                                     int8=Int8Options(attention_row_multiple=None)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path, help="the job-title-similarity folder")
    parser.add_argument("--cache", type=Path, default=HERE / "cache")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--models", nargs="*", default=["minilm", "mpnet"], choices=["minilm", "mpnet"])
    parser.add_argument("--per-language", type=int, default=16, help="titles per language (default 16)")
    args = parser.parse_args()
    raise SystemExit(run_report(args))


def run_report(args: argparse.Namespace) -> int:
    from bench import real_models
    from bench.artifacts import prepare_artifacts
    from bench.machine import machine_info

    titles = _titles(args.data, args.per_language)
    env = Arm64Python.build(args.cache / "arm64")
    paths = {"minilm": real_models.minilm_path, "mpnet": real_models.mpnet_path}
    rows = []
    with tempfile.TemporaryDirectory(prefix="jobbert-arm64-") as tmp:
        work = Path(tmp)
        for short in args.models:
            artifacts = prepare_artifacts(paths[short](), args.cache, ("fp32", "int8"), name=short)
            artifacts[UNPADDED] = export_unpadded(paths[short](), work / f"{short}-int8-unpadded")
            x86 = {p: embed_here(a, titles, PROBES, BATCH) for p, a in artifacts.items()}
            for cpu in CPU_MODELS:
                for precision in EMULATED[short]:
                    artifact = artifacts[precision]
                    if precision == UNPADDED and cpu != "neoverse-n1":
                        continue  # the control: one CPU shows it
                    arm = embed(env, cpu, artifact, titles, work, PROBES, BATCH,
                                log_translation=precision != "fp32")
                    rows.append({"model": short, "precision": precision, "cpu": cpu, "seconds": arm["seconds"],
                                 "dot_instructions": arm.get("dot_instructions"), **arm["report"],
                                 **compare(arm, x86[precision], x86["fp32"])})
                    print(json.dumps(rows[-1]), flush=True)
    record = {"machine": machine_info(), "titles": len(titles), "probes": PROBES, "batch": BATCH, "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    earlier = args.results / "arm64.json"
    if earlier.exists():  # keep the rows of the models this run left out
        kept = [row for row in json.loads(earlier.read_text())["rows"] if row["model"] not in args.models]
        record["rows"] = kept + rows
    (args.results / "arm64.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.results / "arm64.md").write_text(markdown(record))
    return 0


def markdown(record: dict) -> str:
    """The results table of `run_report`'s record."""
    machine = record["machine"]
    lines = ["# ARM64 under emulation (`python -m bench.arm64`)", "",
             f"Host: {machine['cpu']}, {machine['cores']} cores; onnxruntime {machine['versions'].get('onnxruntime')} "
             f"(the aarch64 wheel of the same version under qemu-aarch64 user-mode emulation). {record['titles']} "
             f"job titles, an even share of each language of the data; invariance: the first {record['probes']} "
             f"alone against each last in a batch of {record['batch']} with the longest titles. Artifacts exported "
             "on x86. Seconds are emulated time, not a speed figure.", "",
             "| model | artifact | CPU model | vs x86, same artifact | vs x86 fp32 | batch invariance (min cos) | "
             "bit for bit | dot-product instructions run | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        dots = "-" if row.get("dot_instructions") is None else f"{row['dot_instructions']:,}"
        lines.append(f"| {row['model']} | {row['precision']} | {row['cpu']} | {row['vs_x86_same_precision']:.6f} | "
                     f"{row['vs_x86_fp32']:.6f} | {row['invariance']:.6f} | {'yes' if row['invariant_bit_for_bit'] else 'no'} "
                     f"| {dots} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
