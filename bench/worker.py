"""One benchmark variant in its own process, driven by `bench.speed` over stdin/stdout.

Own processes keep the variants from sharing thread pools, allocators or peak memory: each
one's peak RSS is its own, and its start-up is a real cold start. A variant may run in another
venv's python (the peers, `bench.peers`): this module imports nothing but numpy and the
library of the variant it runs, so it works in a venv without this project installed.

Kinds: `pytorch` (sentence-transformers on PyTorch), `onnx` (this project's runtime),
`st-onnx` (sentence-transformers' ONNX backend) and `fastembed` (a fastembed custom model).

Protocol: the worker loads its model, embeds one title, prints `{"ready": <unix time>}`, then
answers one JSON command per stdin line with one JSON line on stdout:
  {"op": "throughput", "texts": "titles"|"skills", "batch": 8, "head": "anchor", "save": PATH|null}
  {"op": "latency", "count": 200, "head": "anchor"}
  {"op": "embed", "texts": [...], "batch": 32, "head": null, "save": PATH}
  {"op": "invariance", "probes": [...], "context": [...], "head": null, "save": PATH}
      -> saves [2, len(probes), dim]: each probe alone, and each probe last in `context` + [probe]
  {"op": "exit"}   -> {"peak_rss_mb": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KINDS = ("pytorch", "onnx", "st-onnx", "fastembed")


def _load_pytorch(path: str, threads: int | None):
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


def _load_st_onnx(path: str, file: str):
    """sentence-transformers' ONNX backend, loaded as its docs show (`model_kwargs={"file_name": ...}`)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu", backend="onnx", local_files_only=True,
                                model_kwargs={"file_name": file})

    def encode(texts, batch, head):  # no heads: the peer embeds the pooled vector
        return model.encode([t.strip() for t in texts], batch_size=batch, convert_to_numpy=True)

    return encode


def _load_fastembed(path: str, file: str, threads: int | None):
    """A fastembed custom model: mean pooling over the ONNX graph's first output, no normalization."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    hidden = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))["hidden_size"]
    name = f"jobbert-onnx-bench/{Path(path).name}-{Path(file).stem}"
    # The source is never fetched: `specific_model_path` makes fastembed load the local folder.
    TextEmbedding.add_custom_model(model=name, pooling=PoolingType.MEAN, normalization=False,
                                   sources=ModelSource(hf=name), dim=hidden, model_file=file)
    model = TextEmbedding(name, specific_model_path=path, threads=threads, local_files_only=True)

    def encode(texts, batch, head):
        return np.stack(list(model.embed(texts, batch_size=batch)))

    return encode


def _load(kind: str, path: str, threads: int | None, file: str | None):
    """An `encode(texts, batch, head)` function for the variant."""
    if kind == "pytorch":
        return _load_pytorch(path, threads)
    if kind == "st-onnx":
        return _load_st_onnx(path, file or "onnx/model.onnx")
    if kind == "fastembed":
        return _load_fastembed(path, file or "model.onnx", threads)
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


def _save(path: str, embeddings) -> None:
    np.save(path, np.asarray(embeddings, dtype=np.float32))


def serve(encode, workload: dict, lines) -> None:
    """Answer the protocol's commands from `lines` until `exit`."""
    for line in lines:
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
                _save(command["save"], embeddings)
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
        elif op == "embed":
            _save(command["save"], encode(command["texts"], command["batch"], command.get("head")))
            print(json.dumps({"saved": command["save"]}), flush=True)
        elif op == "invariance":
            context, head = command["context"], command.get("head")
            alone = np.asarray(encode(command["probes"], 1, head))
            batched = np.stack([np.asarray(encode([*context, probe], len(context) + 1, head))[-1]
                                for probe in command["probes"]])
            _save(command["save"], np.stack([alone, batched]))
            print(json.dumps({"saved": command["save"]}), flush=True)
        else:
            raise SystemExit(f"unknown command {op!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("path", help="model folder (pytorch, st-onnx, fastembed) or artifact folder (onnx)")
    parser.add_argument("workload", help="JSON file with 'titles' and 'skills' lists")
    parser.add_argument("--file", default=None, help="st-onnx, fastembed: the ONNX file inside the folder")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--head", default="anchor")
    args = parser.parse_args()

    encode = _load(args.kind, args.path, args.threads, args.file)
    with open(args.workload, encoding="utf-8") as handle:
        workload = json.load(handle)
    encode(workload["titles"][:1], 1, args.head)
    print(json.dumps({"ready": time.time()}), flush=True)
    serve(encode, workload, sys.stdin)


# -- the driving side ---------------------------------------------------------------------------
class Worker:
    """A `bench.worker` process run by `python` (default: this one); `started` to `ready` is its
    cold start."""

    def __init__(self, kind: str, path: Path, workload: Path, python: str | Path | None = None,
                 file: str | None = None) -> None:
        root = Path(__file__).resolve().parent.parent
        command = [str(python or sys.executable), "-m", "bench.worker", kind, str(path), str(workload)]
        if file:
            command += ["--file", file]
        self.started = time.time()
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        cwd=root, env=env)
        self.cold_start_s = self._read()["ready"] - self.started

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited with code {self.process.wait()}; see its stderr above.")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> float:
        """Stop the worker; returns its peak RSS in MB."""
        peak = self.ask(op="exit")["peak_rss_mb"]
        self.process.wait(timeout=60)
        return peak


if __name__ == "__main__":
    main()
