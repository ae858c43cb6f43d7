"""One benchmark variant in its own process, driven by `bench.speed` over stdin/stdout.

Own processes keep the variants from sharing thread pools, allocators or peak memory: each
one's peak RSS is its own, and its start-up is a real cold start.

Protocol: the worker loads its model, embeds one title, prints `{"ready": <unix time>}`, then
answers one JSON command per stdin line with one JSON line on stdout:
  {"op": "throughput", "texts": "titles"|"skills", "batch": 8, "head": "anchor", "save": PATH|null}
  {"op": "latency", "count": 200, "head": "anchor"}
  {"op": "exit"}   -> {"peak_rss_mb": ...}
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np


def _load(kind: str, path: str, threads: int | None):
    """An `encode(texts, batch, head)` function for the variant."""
    if kind == "pytorch":
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        model = SentenceTransformer(path, device="cpu", local_files_only=True)
        routed = any(type(module).__name__ == "Router" for module in model)  # ST 6 loads Asym as Router

        def encode(texts, batch, head):
            kwargs = {"task": head} if routed and head else {}
            # The seed recipe: sentence-transformers sorts by length itself; texts stripped like ST <= 5.
            return model.encode([t.strip() for t in texts], batch_size=batch, convert_to_numpy=True, **kwargs)

        return encode
    from jobbert_onnx.runtime import Embedder

    embedder = Embedder(path, threads=threads)

    def encode(texts, batch, head):
        return embedder.encode(texts, head=head if head in embedder.heads else None, batch_size=batch)

    return encode


def peak_rss_mb() -> float:
    """This process's own peak resident memory (MB).

    `/proc/self/status` VmHWM belongs to this process image; `getrusage`'s ru_maxrss survives
    fork and exec, so a worker would report its parent's peak if that was higher.
    """
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6  # the kernel's kB are KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["pytorch", "onnx"])
    parser.add_argument("path", help="model folder (pytorch) or artifact folder (onnx)")
    parser.add_argument("workload", help="JSON file with 'titles' and 'skills' lists")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--head", default="anchor")
    args = parser.parse_args()

    encode = _load(args.kind, args.path, args.threads)
    with open(args.workload, encoding="utf-8") as handle:
        workload = json.load(handle)
    encode(workload["titles"][:1], 1, args.head)
    print(json.dumps({"ready": time.time()}), flush=True)

    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "exit":
            print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)
            return
        if op == "throughput":
            texts = workload[command["texts"]]
            start = time.perf_counter()
            embeddings = encode(texts, command["batch"], command["head"])
            seconds = time.perf_counter() - start
            if command.get("save"):
                np.save(command["save"], np.asarray(embeddings, dtype=np.float32))
            print(json.dumps({"seconds": seconds, "per_second": len(texts) / seconds}), flush=True)
        elif op == "latency":
            times = []
            for text in workload["titles"][: command["count"]]:
                start = time.perf_counter()
                encode([text], 1, command["head"])
                times.append(time.perf_counter() - start)
            ms = np.array(times) * 1000
            print(json.dumps({"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}),
                  flush=True)
        else:
            raise SystemExit(f"unknown command {op!r}")


if __name__ == "__main__":
    main()
