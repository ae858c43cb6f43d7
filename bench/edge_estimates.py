"""On paper: the int8 JobBERT-v3 artifact's p50 and titles/s on Raspberry Pi 4/5 and AWS Graviton2/3 cores.

Nothing here runs on those devices. The estimate scales what this project measured on its x86
machine (bench/results/levers.json: AMD EPYC, AVX2, 2 cores) by the ratio of each core's int8
and fp32 peak to that CPU's, takes the slower of that and the time to stream the weights once
per batch from memory, and reports the slowest and fastest corner of the stated assumptions.
The op counts come from the model's shape (bench/reference_model.py), not from typed-in numbers.

    python -m bench.edge_estimates --data ../shared/data/job-title-similarity
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.reference_model import HEAD_DIMENSION, MAX_SEQ_LENGTH, XLMR_BASE, train_tokenizer
from bench.roofline import layer_shapes, padded_tokens
from bench.workload import DataError, load_tasks, unique_titles

HERE = Path(__file__).resolve().parent
BATCH = 32
LATENCY_TITLES, THROUGHPUT_TITLES = 300, 256  # what bench.levers' int8_graph section times
ASSUMED_TOKENS = {"median": 10.0, "padded_b32": 11.0}  # without --data (see token_workload)


# -- op counts ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    ffn: int
    head_out: int


JOBBERT = Shape(layers=XLMR_BASE["num_hidden_layers"], hidden=XLMR_BASE["hidden_size"],
                ffn=XLMR_BASE["intermediate_size"], head_out=HEAD_DIMENSION)


def title_macs(tokens: float, shape: Shape = JOBBERT, sequence: float | None = None) -> dict[str, float]:
    """Multiply-accumulates for one title of `tokens` rows (padding included) whose attention spans
    `sequence` positions (default `tokens`): the int8 weight matmuls, attention's QK^T and PV
    (fp32), and the anchor head (fp32)."""
    sequence = tokens if sequence is None else sequence
    weights = sum(k * n for k, n in layer_shapes(shape.hidden, shape.ffn))
    return {"int8_weight_matmuls": shape.layers * tokens * weights,
            "fp32_attention": shape.layers * 2 * tokens * sequence * shape.hidden,
            "fp32_head": shape.hidden * shape.head_out}


def streamed_bytes(shape: Shape = JOBBERT) -> dict[str, float]:
    """Bytes read from memory once per batch: the layers' int8 weights with their per-column fp32
    scales, the other fp32 vectors of a layer (biases, SmoothQuant factors, LayerNorms), and the
    fp32 anchor head. The vocabulary table is a gather of a few rows, not streamed."""
    shapes = layer_shapes(shape.hidden, shape.ffn)
    vectors = sum(k + n for k, n in shapes) + 4 * shape.hidden  # SmoothQuant (k), bias (n), 2 LayerNorms
    return {"int8_weights": shape.layers * sum(k * n for k, n in shapes),
            "fp32_column_scales": 4 * shape.layers * sum(n for _, n in shapes),
            "fp32_layer_vectors": 4 * shape.layers * vectors,
            "fp32_head": 4 * (shape.hidden * shape.head_out + shape.head_out)}


# -- published and derived per-core figures ----------------------------------------------------
@dataclass(frozen=True)
class Figure:
    """A value or a range, what kind of figure it is, and the key of its source in SOURCES."""

    low: float
    high: float
    kind: str  # measured | published | derived from the architecture | assumed (or two of them)
    source: str
    note: str = ""

    def cell(self, digits: int = 0) -> str:
        low, high = f"{self.low:,.{digits}f}", f"{self.high:,.{digits}f}"
        return low if low == high else f"{low}–{high}"

    @property
    def short_kind(self) -> str:
        return "/".join(word for word in ("measured", "published", "derived", "assumed") if word in self.kind)


@dataclass(frozen=True)
class Core:
    name: str
    ghz: Figure
    int8_ops_per_cycle: Figure  # 2 ops per multiply-accumulate, the kernel onnxruntime picks
    fp32_flops_per_cycle: Figure
    kernel: str


@dataclass(frozen=True)
class Device:
    name: str
    core: Core
    cores: int
    unit: str  # "core" or "vCPU"
    bandwidth_one: Figure  # GB/s that one core reads
    bandwidth_all: Figure  # GB/s that all `cores` read together


DERIVED = "derived from the architecture"
ZEN3 = Core("AMD EPYC (Zen 3), AVX2", Figure(2.45, 3.5, "measured (2.45) / assumed (3.5)", "epyc",
                                             "2.45 GHz as /proc/cpuinfo reports it under KVM; up to 3.5 GHz boost"),
            Figure(64, 64, DERIVED, "zen3", "vpmaddubsw + vpmaddwd per 32 MACs, both on the 2 integer-multiply pipes"),
            Figure(32, 32, DERIVED, "zen3", "2 x 256-bit FMA"),
            "MlasGemmU8S8KernelAvx2 (vpmaddubsw, vpmaddwd, vpaddd)")
A72 = Core("Cortex-A72", Figure(1.5, 1.8, "published", "pi", "Pi 4: 1.5 GHz, 1.8 GHz on boards since 2020"),
           Figure(16, 16, DERIVED, "a72", "SMULL/SMLAL 8B = 8 MACs each, integer multiply on F0 only: 8 MACs/cycle"),
           Figure(16, 16, DERIVED, "a72", "2 x 128-bit FMA (F0, F1)"),
           "MlasGemmX8S8DispatchNeon (SMULL, SMLAL, SADALP; no dot product)")
A76 = Core("Cortex-A76", Figure(2.4, 2.4, "published", "pi"),
           Figure(64, 64, DERIVED, "a76", "UDOT/SDOT 16 MACs, 2 per cycle"),
           Figure(16, 16, DERIVED, "a76", "2 x 128-bit FMA"), "MlasGemmU8X8DispatchUdot (UDOT)")
N1 = Core("Neoverse-N1", Figure(2.5, 2.5, "published", "g2"),
          Figure(64, 64, DERIVED, "n1", "A76 derivative: UDOT 16 MACs, 2 per cycle"),
          Figure(16, 16, DERIVED, "n1", "2 x 128-bit FMA (V0, V1)"), "MlasGemmU8X8DispatchUdot (UDOT)")
V1 = Core("Neoverse-V1", Figure(2.6, 2.6, "published", "g3"),
          Figure(128, 256, DERIVED, "v1", "UDOT 16 MACs x 4 pipes = 128 ops/cycle; UMMLA 32 MACs x 4 pipes = 256"),
          Figure(32, 32, DERIVED, "v1", "4 x 128-bit FMA"), "MlasGemmU8X8DispatchUmmla (UMMLA, I8MM, Linux)")

DEVICES = (
    Device("Raspberry Pi 4", A72, 4, "core",
           Figure(4.0, 5.5, "published (5.5) / assumed (4.0)", "pi4-bw", "STREAM copy 5.5 GB/s, one thread"),
           Figure(4.0, 6.0, "assumed", "pi4-bw", "no all-core figure found; LPDDR4-3200 x32 = 12.8 GB/s theoretical")),
    Device("Raspberry Pi 5", A76, 4, "core",
           Figure(9.1, 9.4, "published", "pi5-bw", "tinymembench 'C scan 64' (reads), one thread"),
           Figure(9.0, 13.0, "assumed", "pi5-bw", "no all-core figure found; LPDDR4X-4267 x32 = 17.1 GB/s theoretical")),
    Device("AWS Graviton2", N1, 1, "vCPU",
           Figure(2.65, 20.9, "published", "g2-bw", "20.9 one core alone; 2.65 = 169.6 all-core reads / 64 cores"),
           Figure(2.65, 20.9, "published", "g2-bw")),
    Device("AWS Graviton3", V1, 1, "vCPU",
           Figure(3.8, 30.0, "assumed", "g3", "not found; 3.8 = 80% of 307.2 GB/s / 64 cores, 30 for one core alone"),
           Figure(3.8, 30.0, "assumed", "g3")),
)

SOURCES = {
    "levers": "This project: bench/results/levers.json (int8_graph and session_settings sections), "
              "`python -m bench.levers --data DATA` on the AMD EPYC, 2 cores.",
    "epyc": "This project's x86 machine: /proc/cpuinfo reads 'AMD EPYC', cpu family 25, model 1 (Zen 3, Milan), "
            "avx2 without avx512/vnni, 'cpu MHz 2445' under KVM (read 2026-12-06). Boost clock not visible in the VM; "
            "3.5 GHz (Milan's highest boost for most SKUs) is an assumption.",
    "zen3": "LLVM X86ScheduleZnver3.td, after AMD's Software Optimization Guide for Family 19h: vector integer "
            "multiplies on 2 pipes (FP0, FP3), FMA on FP0/FP1, "
            "https://github.com/llvm/llvm-project/blob/main/llvm/lib/Target/X86/X86ScheduleZnver3.td ; MLAS's AVX2 "
            "u8s8 kernel multiplies with vpmaddubsw then vpmaddwd against ones, "
            "https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/core/mlas/lib/x86_64/QgemmU8S8KernelAvx2.S",
    "dispatch": "onnxruntime MLAS platform.cpp (ARM64): u8 x s8 GEMM uses MlasGemmX8S8DispatchNeon, "
                "MlasGemmU8X8DispatchUdot when the CPU has dot product, MlasGemmU8X8DispatchUmmla with I8MM on Linux, "
                "https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/core/mlas/lib/platform.cpp",
    "a72": "Arm Cortex-A72 Software Optimization Guide (UAN 0016A, 2015): ASIMD integer multiply only on the F0 pipe, "
           "FP multiply-accumulate on F0 and F1 (copy: https://dokumen.tips/documents/cortex-a72-software-optimization-"
           "guide.html; restated in T. Bastian's thesis, https://git.tobast.fr/tobast/phd-thesis, 'only port FP0 can do "
           "SIMD multiplication'). MLAS's kernel without dot product: SMULL + SMLAL (8B forms) into 16 bits, SADALP "
           "into 32, https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/core/mlas/lib/aarch64/"
           "QgemmS8S8KernelNeon.S . Published measured rate of the same 16-bit-pair scheme on A72's relatives "
           "(gemmlowp kernel benchmark sheet, 'NEON_64bit_GEMM_Int8Operands_AccumTwoWithin16Bits'): 22.6 Gop/s on a "
           "Cortex-A57 at 1.82 GHz (12.4 ops/cycle, 78% of 16), "
           "https://docs.google.com/spreadsheets/d/1UPbzbp9rdsD6RXxOr5q6AZ0n1omgEknLYO2ogiw6Kqk",
    "a76": "SDOT/UDOT on Cortex-A76: 3 cycles latency, 2 per cycle (NumKong's table from Arm's A76 Software "
           "Optimization Guide, https://github.com/ashvardanian/NumKong/blob/main/include/numkong/dot/neonsdot.h); "
           "A76 FP/ASIMD: 2 x 128-bit pipes.",
    "n1": "Neoverse-N1 is a derivative of Cortex-A76 (AnandTech, https://www.anandtech.com/show/15578/cloud-clash-"
          "amazon-graviton2-arm-against-intel-and-amd); 2 FP/ASIMD pipes V0/V1, FMLA on both (LLVM "
          "AArch64SchedNeoverseN1.td, after Arm's N1 Software Optimization Guide, https://github.com/llvm/llvm-project/"
          "blob/main/llvm/lib/Target/AArch64/AArch64SchedNeoverseN1.td).",
    "v1": "LLVM AArch64SchedNeoverseV1.td, after Arm's V1 Software Optimization Guide: 4 FP/ASIMD pipes V0-V3; ASIMD "
          "SDOT/UDOT (V1Wr_VDOT) and SMMLA/UMMLA (V1Wr_VMMA) on any of the 4, FMLA on any of the 4, "
          "https://github.com/llvm/llvm-project/blob/main/llvm/lib/Target/AArch64/AArch64SchedNeoverseV1.td . "
          "Published end to end: onnxruntime's MMLA int8 kernels (1.17+) made int8 NLP inference up to 30% faster than "
          "its dot-product kernels on Graviton3 (AWS ML blog, https://aws.amazon.com/blogs/machine-learning/accelerate-"
          "nlp-inference-with-onnx-runtime-on-aws-graviton-processors/), well short of the 2x of the peaks: hence "
          "the range from the UDOT to the UMMLA peak.",
    "pi": "Raspberry Pi 4: 4 x Cortex-A72 at 1.5 GHz (MagPi, https://magpi.raspberrypi.com/articles/raspberry-pi-4-"
          "specs-benchmarks), 1.8 GHz on later boards; LPDDR4-3200. Raspberry Pi 5: 4 x Cortex-A76 at 2.4 GHz, "
          "LPDDR4X-4267 (https://forum.digikey.com/t/raspberry-pi-5-vs-other-models-evaluation-test/53405).",
    "pi4-bw": "STREAM on a Raspberry Pi 4 (gcc -O3, one thread): copy 5,527 MB/s, scale 5,562, triad 4,844 "
              "(https://www.sci-pi.org.uk/bench/stream.html).",
    "pi5-bw": "tinymembench on Raspberry Pi 5 boards (one thread): 'C scan 64' 9,122-9,407 MB/s, 'C copy' "
              "5,557-6,155 MB/s (https://github.com/raspberrypi/firmware/issues/1876); C copy 4.9-6.3 GB/s in "
              "https://github.com/geerlingguy/sbc-reviews/issues/21 .",
    "g2": "Graviton2: 64 Neoverse-N1 at 2.5 GHz, 8 x DDR4-3200 = 204.8 GB/s theoretical (AnandTech, "
          "https://www.anandtech.com/show/15578/cloud-clash-amazon-graviton2-arm-against-intel-and-amd).",
    "g2-bw": "Arm's System Characterization Tool on c6g.16xlarge: one core, DRAM-sized data: 20.9 GB/s "
             "(https://learn.arm.com/learning-paths/servers-and-cloud-computing/memory-subsystem/streaming-bandwidth/); "
             "all 64 cores, all reads: 169.6 GB/s (https://learn.arm.com/learning-paths/servers-and-cloud-computing/"
             "memory-subsystem/multicore-bandwidth/).",
    "g3": "Graviton3: 64 Neoverse-V1 at 2.6 GHz, 8 x DDR5-4800 = 307.2 GB/s theoretical "
          "(https://en.wikichip.org/wiki/AWS_Graviton3). No published one-core or all-core bandwidth found.",
    "emulation": "This project's check under qemu (the edge issue): onnxruntime's int8 kernels use dot-product "
                 "instructions only on the Neoverse-N1 CPU model, not on Cortex-A72 (baseline NEON kernel).",
}

NOT_FOUND = (
    "A published, measured int8 BERT-base (or any onnxruntime int8 transformer) latency on a Raspberry Pi 4/5 or "
    "a Graviton2/3 vCPU at ~10 tokens: none in the searchable sources. Only the AWS blog's relative +30% (MMLA vs "
    "dot-product kernels on Graviton3) was found.",
    "A measured MLAS int8 GEMM rate (GOP/s) on any of the four cores; the A72 figure is cross-checked only against "
    "gemmlowp's published rate for the same SMULL/SMLAL/SADALP scheme on a Cortex-A57.",
    "All-core memory bandwidth for the Raspberry Pi 4 and 5, and any bandwidth figure for Graviton3 (assumed, see "
    "the inputs table).",
    "The EPYC's clock while it ran the benchmarks (the VM shows 2.45 GHz; the range runs to 3.5 GHz).",
)


# -- what we measured --------------------------------------------------------------------------
@dataclass(frozen=True)
class Anchor:
    """The shipped int8 graph on the x86 machine (bench.levers), encoder alone, default threads."""

    cpu: str
    cores: int
    p50_ms: float  # one title
    floor_p50_ms: float  # the shipped graph's int8 matmuls alone
    titles_per_s_b32: float
    one_thread_p50_ms: float  # session settings: 1 thread against the default
    default_p50_ms: float
    one_thread_b8: float
    default_b8: float
    measured: str

    @property
    def matmul_share_b1(self) -> float:
        return self.floor_p50_ms / self.p50_ms

    @property
    def serial_b1(self) -> float:
        return amdahl_serial(self.one_thread_p50_ms, self.default_p50_ms)

    @property
    def serial_b32(self) -> float:
        return amdahl_serial(1 / self.one_thread_b8, 1 / self.default_b8)

    @property
    def one_core_s_b1(self) -> float:
        """Seconds for one title on one x86 core: the measured time x the measured 1/2-thread ratio."""
        return self.p50_ms / 1000 * self.one_thread_p50_ms / self.default_p50_ms

    @property
    def one_core_s_b32(self) -> float:
        return BATCH / self.titles_per_s_b32 * self.default_b8 / self.one_thread_b8


def read_anchor(levers: dict) -> Anchor:
    """The anchor figures from bench/results/levers.json; the x86 peaks below assume an AVX2 CPU without
    VNNI (MLAS's vpmaddubsw kernel), so refuse a file measured elsewhere."""
    machines = [levers["measured"][section]["machine"] for section in ("int8_graph", "session_settings")]
    for machine in machines:
        simd = machine["simd"]
        if not simd.get("avx2") or any(simd.get(flag) for flag in ("avx512f", "avx512_vnni", "avx_vnni", "amx_int8")):
            raise ValueError(f"levers.json was measured on {machine['cpu']} ({simd}); this estimate derives the x86 "
                             "peak for an AVX2 CPU without VNNI (AMD EPYC, Zen 3). Re-run bench.levers there.")
    variants = levers["int8_graph"]["variants"]
    shipped = next(v for v in variants if v["variant"].endswith("(shipped)"))
    floor = next(v for v in variants if v["variant"].startswith("floor:"))
    int8 = {s["setting"]: s for s in levers["session_settings"] if s["precision"] == "int8"}
    one, default = int8["1 thread"], int8["optimization all (default)"]
    return Anchor(cpu=machines[0]["cpu"], cores=machines[0]["cores"], p50_ms=shipped["p50_ms"],
                  floor_p50_ms=floor["p50_ms"], titles_per_s_b32=shipped["titles_per_s_b32"],
                  one_thread_p50_ms=one["p50_ms"], default_p50_ms=default["p50_ms"],
                  one_thread_b8=one["titles_per_s_b8"], default_b8=default["titles_per_s_b8"],
                  measured=levers["measured"]["int8_graph"].get("date", levers.get("date", "")))


def token_workload(data: Path | None, cache: Path = HERE / "cache") -> dict:
    """Token counts (special tokens included, cut at 64) of the titles bench.levers times: the median of
    the 300 one-title runs, and tokens per title with batch-32 padding over the 256 throughput titles,
    through the reference model's tokenizer. Without data, the assumed figures."""
    if data is None:
        return {"source": "assumed (no --data): ~10 tokens per title with special tokens, as the reference "
                          "tokenizer measured on the job-title-similarity data (mean 9.9, bench/results/speed.md); "
                          "11 per title at batch 32 with padding",
                "median_tokens": ASSUMED_TOKENS["median"], "padded_tokens_b32": ASSUMED_TOKENS["padded_b32"],
                "attention_sequence_b32": ASSUMED_TOKENS["padded_b32"]}
    from tokenizers import Tokenizer

    titles = unique_titles(load_tasks(data))
    path = cache / "reference-model" / "tokenizer.json"
    with tempfile.TemporaryDirectory(prefix="jobbert-edge-estimates-") as work:
        if not path.is_file():  # train it as bench.reference_model does (tokenizers only)
            train_tokenizer(titles, Path(work))
            path = Path(work) / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(MAX_SEQ_LENGTH)
    tokenizer.no_padding()
    lengths = [len(encoding.ids) for encoding in tokenizer.encode_batch(titles)]
    throughput = lengths[:THROUGHPUT_TITLES]
    tokens, sequence = padded_tokens(throughput, BATCH)
    where = "bench/cache/reference-model/tokenizer.json" if path.is_relative_to(cache) else "trained on the spot"
    return {"source": f"measured with the reference model's tokenizer ({where}) on the {len(titles):,} unique "
                      "titles of --data",
            "titles": len(titles), "mean_tokens_all": statistics.mean(lengths),
            "median_tokens_all": statistics.median(lengths),
            "median_tokens": statistics.median(lengths[:LATENCY_TITLES]),
            "padded_tokens_b32": tokens / len(throughput), "attention_sequence_b32": sequence}


# -- the estimate ------------------------------------------------------------------------------
ASSUMED = {
    "kernel_transfer": (0.75, 1.0),  # MLAS's ARM kernels reach this share of the efficiency of its AVX2 kernel
    "matmul_share_b32": (0.5, 0.7),  # int8 matmuls' share of the x86 time at batch 32 (batch 1: measured)
}


def amdahl_serial(one_thread: float, two_threads: float) -> float:
    """Serial fraction of a run that takes `one_thread` seconds on 1 thread and `two_threads` on 2."""
    return min(1.0, max(0.0, 2 * two_threads / one_thread - 1))


def device_seconds(x86_one_core_s: float, matmul_share: float, x86_ghz: float, core: Core, ghz: float,
                   int8_ops: float, kernel_transfer: float, serial: float, threads: int) -> float:
    """Seconds on `threads` cores of `core`: the x86 machine's one-core time, its int8-matmul share scaled
    by the int8 peaks (and the kernel transfer), the rest by the fp32 peaks, then Amdahl's law."""
    int8_ratio = (ZEN3.int8_ops_per_cycle.low * x86_ghz) / (int8_ops * ghz * kernel_transfer)
    fp32_ratio = (ZEN3.fp32_flops_per_cycle.low * x86_ghz) / (core.fp32_flops_per_cycle.low * ghz)
    one_core = x86_one_core_s * (matmul_share * int8_ratio + (1 - matmul_share) * fp32_ratio)
    return one_core * (serial + (1 - serial) / threads)


def _corners(*figures: tuple[float, float]) -> itertools.product:
    return itertools.product(*[sorted({low, high}) for low, high in figures])


def estimate(device: Device, cores: int, anchor: Anchor, bytes_per_batch: float) -> dict:
    """p50 of one title and titles/s at batch 32 on `cores` cores of `device`, low and high over every
    corner of the assumptions, and what bounds each."""
    core = device.core
    bandwidth = device.bandwidth_one if cores == 1 else device.bandwidth_all
    p50, threaded, replicas, bounds = [], [], [], set()
    for x86_ghz, ghz, ops, transfer, share32, gbps in _corners(
            (ZEN3.ghz.low, ZEN3.ghz.high), (core.ghz.low, core.ghz.high),
            (core.int8_ops_per_cycle.low, core.int8_ops_per_cycle.high), ASSUMED["kernel_transfer"],
            ASSUMED["matmul_share_b32"], (bandwidth.low, bandwidth.high)):
        memory_s = bytes_per_batch / (gbps * 1e9)
        compute = device_seconds(anchor.one_core_s_b1, anchor.matmul_share_b1, x86_ghz, core, ghz, ops, transfer,
                                 anchor.serial_b1, cores)
        p50.append(max(compute, memory_s))
        bounds.add("compute" if compute >= memory_s else "memory")
        batch_args = (anchor.one_core_s_b32, share32, x86_ghz, core, ghz, ops, transfer, anchor.serial_b32)
        threaded.append(BATCH / max(device_seconds(*batch_args, cores), memory_s))
        one_core = device_seconds(*batch_args, 1)
        replicas.append(cores * BATCH / max(one_core, cores * memory_s))
    return {"device": device.name, "core": core.name, "cores": cores, "unit": device.unit,
            "p50_ms": (min(p50) * 1000, max(p50) * 1000),
            "titles_per_s_b32": (min(threaded), max(threaded)),
            "titles_per_s_b32_replicas": (min(replicas), max(replicas)),
            "bound_by_b1": "/".join(sorted(bounds, key=["compute", "memory"].index)),
            "bandwidth_gbps": (bandwidth.low, bandwidth.high)}


def x86_efficiency(anchor: Anchor, tokens: dict) -> dict:
    """The share of the x86 machine's derived int8 peak that the shipped graph (and its matmuls alone)
    reaches, at the slow and the fast end of its clock."""
    one = title_macs(tokens["median_tokens"])
    b32 = title_macs(tokens["padded_tokens_b32"], sequence=tokens["attention_sequence_b32"])
    ops_one, ops_mm = 2 * sum(one.values()), 2 * one["int8_weight_matmuls"]
    rates = {"graph_b1": ops_one / (anchor.p50_ms / 1000), "matmuls_b1": ops_mm / (anchor.floor_p50_ms / 1000),
             "graph_b32": 2 * sum(b32.values()) * anchor.titles_per_s_b32}
    peaks = {ghz: anchor.cores * ZEN3.int8_ops_per_cycle.low * ghz * 1e9 for ghz in (ZEN3.ghz.low, ZEN3.ghz.high)}
    return {"achieved_gops": {k: v / 1e9 for k, v in rates.items()},
            "peak_gops": {f"{ghz} GHz": peak / 1e9 for ghz, peak in peaks.items()},
            "share_of_peak": {k: (v / peaks[ZEN3.ghz.high], v / peaks[ZEN3.ghz.low]) for k, v in rates.items()}}


def build(anchor: Anchor, tokens: dict) -> dict:
    streamed = streamed_bytes()
    bytes_per_batch = sum(streamed.values())
    rows = [estimate(device, cores, anchor, bytes_per_batch) for device in DEVICES
            for cores in sorted({1, device.cores})]
    counts = {label: title_macs(t, sequence=s) for label, t, s in (
        ("1 title (median tokens)", tokens["median_tokens"], None),
        ("per title at batch 32 (padded)", tokens["padded_tokens_b32"], tokens["attention_sequence_b32"]))}
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "shape": asdict(JOBBERT), "max_seq_length": MAX_SEQ_LENGTH,
            "tokens": tokens, "macs": counts, "streamed_bytes": streamed, "bytes_per_batch": bytes_per_batch,
            "anchor": asdict(anchor) | {"matmul_share_b1": anchor.matmul_share_b1, "serial_fraction_b1": anchor.serial_b1,
                                        "serial_fraction_b32": anchor.serial_b32},
            "x86": {"core": asdict(ZEN3), "efficiency": x86_efficiency(anchor, tokens)},
            "devices": [asdict(d) for d in DEVICES], "assumed": ASSUMED, "rows": rows,
            "sources": SOURCES, "not_found": list(NOT_FOUND)}


# -- report ------------------------------------------------------------------------------------
def _range(pair: tuple[float, float], digits: int = 0) -> str:
    return Figure(pair[0], pair[1], "", "").cell(digits)


def _peak_cell(core: Core) -> str:
    """int8 GOP/s of one core: ops/cycle x GHz, lowest and highest."""
    return _range((core.int8_ops_per_cycle.low * core.ghz.low, core.int8_ops_per_cycle.high * core.ghz.high))


def summary_table(result: dict) -> list[str]:
    """The table for the README: the measured x86 row, then the estimates."""
    anchor = result["anchor"]
    lines = ["| device | cores | int8 peak GOP/s/core (source) | bandwidth GB/s (source) | est. p50 1 title (ms) | "
             "est. titles/s @32 (all cores) | bound by |", "|---|---|---|---|---|---|---|",
             f"| {anchor['cpu']} (Zen 3, AVX2), **measured** | {anchor['cores']} | {_peak_cell(ZEN3)} (derived) | — | "
             f"{anchor['p50_ms']:.1f} (measured) | {anchor['titles_per_s_b32']:.0f} (measured) | — |"]
    by_name = {d.name: d for d in DEVICES}
    for row in result["rows"]:
        device = by_name[row["device"]]
        bandwidth = device.bandwidth_one if row["cores"] == 1 else device.bandwidth_all
        unit = row["unit"] + ("s" if row["cores"] > 1 else "")
        p50_digits = 1 if row["p50_ms"][1] < 20 else 0
        lines.append(f"| {row['device']} ({device.core.name}, {device.core.ghz.cell(1)} GHz) | {row['cores']} {unit} | "
                     f"{_peak_cell(device.core)} ({device.core.int8_ops_per_cycle.short_kind}) | "
                     f"{bandwidth.cell(1)} ({bandwidth.short_kind}) | "
                     f"{_range(row['p50_ms'], p50_digits)} | {_range(row['titles_per_s_b32'])} | {row['bound_by_b1']} |")
    return lines


def to_markdown(result: dict) -> str:
    a, t, eff = result["anchor"], result["tokens"], result["x86"]["efficiency"]
    mb = {k: v / 1e6 for k, v in result["streamed_bytes"].items()}
    lines = ["# Edge estimates (on paper): int8 JobBERT-v3 on Raspberry Pi 4/5 and AWS Graviton2/3", "",
             f"Generated {result['date']} by `python -m bench.edge_estimates`. **Every device figure below is an "
             "estimate; nothing ran on those devices.** The only measured row is the x86 machine the estimate is "
             f"scaled from (bench/results/levers.json, measured {a['measured']}). Ranges run from the slowest to the "
             "fastest corner of the stated assumptions; they are not confidence intervals.", ""]
    lines += summary_table(result)
    replica_rows = [r for r in result["rows"] if r["cores"] > 1]
    lines += ["", "*bound by*: what limits one title (compute, or streaming the weights from memory once per batch). "
              "*titles/s @32*: one process using all the row's cores (onnxruntime's intra-op threads). With one "
              "single-threaded process per core instead (`serve --threads 1` replicas, each with its own copy of the "
              "model: 420 MB peak RSS each, bench/results/speed.md): "
              + "; ".join(f"{r['device']} {r['cores']} {r['unit']}s ~{_range(r['titles_per_s_b32_replicas'])} titles/s"
                          for r in replica_rows) + " (estimate).", ""]
    lines += ["## How computed", "",
              "1. **Op counts** (`title_macs`, from bench/reference_model.py's XLM-R base shape: "
              f"{result['shape']['layers']} layers, hidden {result['shape']['hidden']}, FFN {result['shape']['ffn']}, "
              f"head {result['shape']['hidden']}x{result['shape']['head_out']}; at most {result['max_seq_length']} tokens). "
              f"Tokens: {t['source']}.", ""]
    lines += ["   | workload | tokens | int8 weight matmuls GOP | fp32 attention GOP | fp32 head GOP | total GOP |",
              "   |---|---|---|---|---|---|"]
    for label, macs in result["macs"].items():
        tokens = t["median_tokens"] if label.startswith("1 title") else t["padded_tokens_b32"]
        lines.append(f"   | {label} | {tokens:.1f} | {2 * macs['int8_weight_matmuls'] / 1e9:.3f} | "
                     f"{2 * macs['fp32_attention'] / 1e9:.4f} | {2 * macs['fp32_head'] / 1e9:.4f} | "
                     f"{2 * sum(macs.values()) / 1e9:.3f} |")
    lines += ["", f"   Streamed once per batch: {mb['int8_weights']:.2f} MB int8 weights + {mb['fp32_column_scales']:.2f} MB "
              f"per-column fp32 scales (together {mb['int8_weights'] + mb['fp32_column_scales']:.2f} MB; the levers "
              "'floor' graph of exactly these 48 matmuls measured 85.3 MB on disk) + "
              f"{mb['fp32_layer_vectors']:.2f} MB other fp32 vectors + {mb['fp32_head']:.2f} MB fp32 head = "
              f"{result['bytes_per_batch'] / 1e6:.1f} MB. The 250,002-row vocabulary table is gathered "
              "(~10 rows per title), not streamed; the activations of ~10 tokens stay in cache.", ""]
    share = eff["share_of_peak"]
    lines += [f"2. **Anchor (measured):** on the {a['cpu']}, {a['cores']} cores, the shipped int8 encoder takes "
              f"{a['p50_ms']:.1f} ms per title (p50) and {a['titles_per_s_b32']:.1f} titles/s at batch 32; its 48 int8 "
              f"matmuls alone take {a['floor_p50_ms']:.1f} ms, so they are {a['matmul_share_b1']:.0%} of the one-title "
              f"time. Against the int8 peak derived for {a['cores']} Zen 3 cores, "
              f"{eff['peak_gops'][f'{ZEN3.ghz.low} GHz']:.0f} GOP/s at {ZEN3.ghz.low} GHz or "
              f"{eff['peak_gops'][f'{ZEN3.ghz.high} GHz']:.0f} at {ZEN3.ghz.high} GHz, the graph reaches "
              f"{eff['achieved_gops']['graph_b1']:.0f} GOP/s for one title ({share['graph_b1'][1]:.0%} or "
              f"{share['graph_b1'][0]:.0%}), its matmuls alone {eff['achieved_gops']['matmuls_b1']:.0f} GOP/s "
              f"({share['matmuls_b1'][1]:.0%} or {share['matmuls_b1'][0]:.0%}), and the graph "
              f"{eff['achieved_gops']['graph_b32']:.0f} GOP/s at batch 32 ({share['graph_b32'][1]:.0%} or "
              f"{share['graph_b32'][0]:.0%}). One thread against two (same machine, session-settings run): "
              f"p50 {a['one_thread_p50_ms']:.1f} against {a['default_p50_ms']:.1f} ms, "
              f"{a['one_thread_b8']:.1f} against {a['default_b8']:.1f} titles/s at batch 8.", "",
              "3. **Scaling to a core (estimate):** one-core x86 time = measured 2-thread time x the measured "
              "1-thread/2-thread ratio. Its int8-matmul share is scaled by (x86 int8 peak) / (device int8 peak x "
              f"kernel transfer {ASSUMED['kernel_transfer'][0]}–{ASSUMED['kernel_transfer'][1]}), the rest (LayerNorm, "
              "GELU, row quantization, attention, per-node overhead) by the fp32 SIMD peaks. The int8-matmul share is "
              f"the measured {a['matmul_share_b1']:.2f} for one title and an assumed "
              f"{ASSUMED['matmul_share_b32'][0]}–{ASSUMED['matmul_share_b32'][1]} at batch 32 (not measured on this CPU). "
              "ARM's narrower fp32 units relative to its int8 units (A76/N1 4:1, V1 8:1, Zen 3 2:1) make that rest "
              "weigh more there than on x86.", "",
              "4. **Cores (estimate):** Amdahl's law with the serial fraction fitted to the x86 1-thread/2-thread "
              f"ratios ({a['serial_fraction_b1']:.2f} for one title, {a['serial_fraction_b32']:.2f} for batches); the "
              "replica figures scale one core linearly, memory permitting.", "",
              f"5. **Memory (estimate):** {result['bytes_per_batch'] / 1e6:.0f} MB / bandwidth, once per batch (per "
              "replica per batch for replicas); the estimate is the slower of compute and memory.", "",
              "6. **Range:** every combination of the low and high end of the x86 clock, the device clock, its int8 "
              "peak (V1: UDOT to UMMLA), the kernel transfer, the batch-32 matmul share and the bandwidth.", "",
              "Cortex-A72 has no dot-product instructions, so onnxruntime runs its baseline NEON int8 kernel there "
              "(SMULL/SMLAL into 16 bits, SADALP into 32): 8 MACs per cycle against 32 for the A76/N1's UDOT. "
              f"{SOURCES['emulation']}", ""]
    lines += ["## What is measured and what is estimated", "",
              "- **Measured by this project** (AMD EPYC, 2 cores): the one-title p50, the matmuls-only floor, batch-32 "
              "titles/s, the 1- against 2-thread ratios (bench/results/levers.json); the token counts "
              f"({'reference tokenizer on --data' if 'titles' in t else 'assumed, no --data'}); the EPYC's family and "
              "reported clock.",
              "- **Published by others:** the memory bandwidths marked *published*; gemmlowp's int8 kernel rate on a "
              "Cortex-A57; the clocks; AWS's +30% for MMLA kernels on Graviton3 (all in Sources).",
              "- **Derived from the architecture:** every int8 and fp32 peak (pipes x instruction throughput from "
              "the vendors' optimization guides as LLVM's scheduling models record them, and the MLAS kernel each "
              "core gets).",
              f"- **Assumed:** the EPYC's clock range, the kernel transfer ({ASSUMED['kernel_transfer'][0]}–"
              f"{ASSUMED['kernel_transfer'][1]}: MLAS's NEON/UDOT/UMMLA kernels reach this share of the efficiency its "
              "AVX2 kernel reaches on Zen 3), the batch-32 matmul share, that the x86 thread scaling carries over, "
              "and the bandwidths marked *assumed*.",
              "- **Estimated:** every device p50 and titles/s above.", ""]
    lines += ["## Inputs per core", "",
              "| core | GHz | int8 ops/cycle (kind) | fp32 FLOP/cycle | onnxruntime int8 kernel | note |",
              "|---|---|---|---|---|---|"]
    for core in (ZEN3, A72, A76, N1, V1):
        lines.append(f"| {core.name} | {core.ghz.cell(2)} ({core.ghz.kind}) | {core.int8_ops_per_cycle.cell()} "
                     f"({core.int8_ops_per_cycle.kind}) | {core.fp32_flops_per_cycle.cell()} | {core.kernel} | "
                     f"{core.int8_ops_per_cycle.note} [{core.int8_ops_per_cycle.source}] |")
    lines += ["", "| device | bandwidth, one core (GB/s) | all cores (GB/s) | kind | note |", "|---|---|---|---|---|"]
    for device in DEVICES:
        notes = "; ".join(dict.fromkeys(n for n in (device.bandwidth_one.note, device.bandwidth_all.note) if n))
        kinds = " / ".join(dict.fromkeys((device.bandwidth_one.kind, device.bandwidth_all.kind)))
        lines.append(f"| {device.name} | {device.bandwidth_one.cell(2)} | {device.bandwidth_all.cell(2)} | {kinds} | "
                     f"{notes} [{device.bandwidth_one.source}] |")
    lines += ["", "## Sources", ""] + [f"- **[{key}]** {text}" for key, text in SOURCES.items()]
    lines += ["", "## Not found", ""] + [f"- {item}" for item in NOT_FOUND]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from bench.measure import write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the job-title-similarity folder (token counts; else assumed)")
    parser.add_argument("--levers", type=Path, default=HERE / "results" / "levers.json")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    try:
        anchor = read_anchor(json.loads(args.levers.read_text(encoding="utf-8")))
        tokens = token_workload(args.data)
    except (DataError, OSError, ValueError, KeyError, StopIteration) as exc:
        print(f"bench.edge_estimates: error: {exc!r}", file=sys.stderr)
        return 2
    result = build(anchor, tokens)
    markdown = to_markdown(result)
    write_results(args.results, "edge_estimates", result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
