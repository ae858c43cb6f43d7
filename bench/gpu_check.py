"""The CUDA path on a GPU machine: parity of CUDA against the CPU, then throughput against PyTorch.

Run through `bench/gpu_check.sh`. On the reference-size model (JobBERT-v3's shape, random
weights), exported at fp32 and fp16:

1. parity: the same titles and skill lists embedded on CUDA and on the CPU, min/mean cosine;
2. device selection: `cuda:0` works, a GPU index that does not exist fails with a clear error;
3. throughput (titles/s) at batch 1, 32 and 256: our fp32 and fp16 on CUDA (with I/O binding,
   and fp16 without it, to show what binding buys), against sentence-transformers on PyTorch
   CUDA in fp16 (and fp32).

Writes `gpu_check.json` and `gpu_check.md` to `--out`. Sized to finish in a few minutes on an H100.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from bench.machine import machine_info
from bench.measure import cosine_rows, rate
from bench.reference_model import build_reference_model
from bench.workload import load_tasks, skill_lists, unique_titles

BATCHES = (1, 32, 256)


def _log(message: str) -> None:
    print(f"[gpu] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the job-title-similarity folder")
    parser.add_argument("--work", type=Path, default=Path("/tmp/jobbert-gpu"), help="model and artifacts")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json / .md")
    parser.add_argument("--titles", type=int, default=4096)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine_info(), "steps": {}}

    def save() -> None:
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")

    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, as onnxruntime-gpu documents
    result["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers()}
    _log(f"onnxruntime {ort.__version__}: {ort.get_available_providers()}")

    all_titles = unique_titles(load_tasks(args.data))
    titles = all_titles[: args.titles]
    skills = skill_lists(all_titles, 64)
    model = build_reference_model(args.work / "reference-model", all_titles)

    from jobbert_onnx.export import ExportConfig, export_model
    from jobbert_onnx.runtime import Embedder

    artifacts = {}
    for precision in ("fp32", "fp16"):
        start = time.perf_counter()
        artifacts[precision] = export_model(ExportConfig(model=str(model), output=args.work / precision,
                                                         precision=precision, overwrite=True, show_progress=False))
        _log(f"exported {precision} in {time.perf_counter() - start:.0f} s")

    # 1. parity
    parity = {}
    for precision, artifact in artifacts.items():
        cpu = Embedder(artifact, device="cpu")
        gpu = Embedder(artifact, device="cuda")
        parity[precision] = {}
        for name, texts, head in (("titles", titles[:512], "anchor"), ("skills", skills, "positive")):
            cosine = cosine_rows(cpu.encode(texts, head=head, batch_size=32), gpu.encode(texts, head=head, batch_size=32))
            parity[precision][name] = {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}
        _log(f"parity {precision}: {parity[precision]}")
    result["steps"]["parity_cuda_vs_cpu"] = parity
    save()

    # 2. device selection and its errors
    devices = {"cuda:0": Embedder(artifacts["fp16"], device="cuda:0").encode(titles[:4]).shape[0] == 4}
    try:
        Embedder(artifacts["fp16"], device="cuda:7")
        devices["cuda:7"] = "no error (machine has 8 GPUs?)"
    except Exception as exc:  # the point is to show the message users get
        devices["cuda:7"] = f"{type(exc).__name__}: {exc}"
    result["steps"]["device_selection"] = devices
    _log(f"devices: {devices}")
    save()

    # 3. throughput
    throughput: dict[str, dict[str, float]] = {}
    variants = {
        "onnx-fp32 cuda": Embedder(artifacts["fp32"], device="cuda"),
        "onnx-fp16 cuda": Embedder(artifacts["fp16"], device="cuda"),
        "onnx-fp16 cuda, no I/O binding": Embedder(artifacts["fp16"], device="cuda", io_binding=False),
    }
    for name, embedder in variants.items():
        throughput[name] = {str(b): rate(lambda t, b, e=embedder: e.encode(t, head="anchor", batch_size=b),
                                          titles[:256] if b == 1 else titles, b) for b in BATCHES}
        _log(f"{name}: {throughput[name]}")
        save()

    import torch
    from sentence_transformers import SentenceTransformer

    for label, half in (("pytorch-fp16 cuda", True), ("pytorch-fp32 cuda", False)):
        st = SentenceTransformer(str(model), device="cuda")
        if half:
            st.half()
        throughput[label] = {str(b): rate(lambda t, b: st.encode(t, batch_size=b, task="anchor"),
                                           titles[:256] if b == 1 else titles, b) for b in BATCHES}
        _log(f"{label}: {throughput[label]}")
        del st
        torch.cuda.empty_cache()
        save()
    result["steps"]["throughput_titles_per_s"] = throughput
    result["gpu"] = torch.cuda.get_device_name(0)
    save()

    lines = [f"GPU check on {result['gpu']}, onnxruntime-gpu {ort.__version__}, torch {torch.__version__}.", "",
             "| precision | titles min / mean cos | skills min / mean cos |", "|---|---|---|"]
    for precision, p in parity.items():
        lines.append(f"| {precision} | {p['titles']['min_cosine']:.6f} / {p['titles']['mean_cosine']:.6f} | "
                     f"{p['skills']['min_cosine']:.6f} / {p['skills']['mean_cosine']:.6f} |")
    lines += ["", "| variant | " + " | ".join(f"titles/s @{b}" for b in BATCHES) + " |", "|---|---|---|---|"]
    for name, rates in throughput.items():
        lines.append(f"| {name} | " + " | ".join(f"{rates[str(b)]:.0f}" for b in BATCHES) + " |")
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
