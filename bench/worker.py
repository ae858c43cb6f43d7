"""One benchmark variant in its own process, driven by `bench.speed` over stdin/stdout.

Own processes keep the variants from sharing thread pools, allocators or peak memory: each
one's peak RSS is its own, and its start-up is a real cold start. A variant may run in another
venv's python (the peers, `bench.peers`): this module imports nothing but numpy and the
library of the variant it runs, so it works in a venv without this project installed.

Kinds: `pytorch` (sentence-transformers on PyTorch), `onnx` (this project's runtime),
`st-onnx` (sentence-transformers' ONNX backend), `fastembed` (a fastembed custom model) and
`openvino` (an OpenVINO IR compiled for "CPU", `tokenizers` and mean pooling in numpy).

Protocol: the worker loads its model, embeds one title, prints `{"ready": <unix time>}` (plus
`"info": {...}` where the library chose settings worth reporting, e.g. OpenVINO's inference
precision), then answers one JSON command per stdin line with one JSON line on stdout:
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

KINDS = ("pytorch", "onnx", "st-onnx", "fastembed", "openvino")


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


def openvino_feeds(tokenizer, strip: bool, texts, names) -> dict[str, np.ndarray]:
    """int64 `input_ids`, `attention_mask` and `token_type_ids` [batch, seq] for the encoder inputs
    in `names`, from a `tokenizers.Tokenizer` saved with its truncation and padding
    (`bench.peers.openvino_folder`). NNCF's calibration (`bench.peers.openvino_build`) uses it too."""
    encodings = tokenizer.encode_batch([text.strip() if strip else text for text in texts], add_special_tokens=True)
    feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
             "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
    return {name: array for name, array in feeds.items() if name in names}


def _load_openvino(path: str, file: str, threads: int | None):
    """An OpenVINO IR (`bench.peers`: this project's encoder.onnx converted, or NNCF's int8 of it)
    compiled for "CPU" at OpenVINO's defaults (`threads`: INFERENCE_NUM_THREADS), the folder's
    tokenizer, and mean pooling over the attention mask, no normalization. Batches are sorted by
    length, longest first, as sentence-transformers does."""
    import openvino as ov
    from tokenizers import Tokenizer

    folder = Path(path)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    strip = json.loads((folder / "tokenization.json").read_text(encoding="utf-8"))["strip"]
    compiled = ov.Core().compile_model(str(folder / file), "CPU",
                                       {"INFERENCE_NUM_THREADS": threads} if threads else {})
    names = {port.get_any_name() for port in compiled.inputs}
    request = compiled.create_infer_request()
    output = compiled.output(0)  # the token embeddings

    def encode(texts, batch, head):  # no heads: the peer embeds the pooled vector
        order = np.argsort([-len(text) for text in texts], kind="stable")
        parts = []
        for start in range(0, len(texts), batch):
            feeds = openvino_feeds(tokenizer, strip, [texts[i] for i in order[start:start + batch]],
                                   names | {"attention_mask"})
            mask = feeds["attention_mask"].astype(np.float32)[:, :, None]
            tokens = request.infer({k: v for k, v in feeds.items() if k in names})[output]
            parts.append((tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9))
        pooled = np.concatenate(parts).astype(np.float32)
        pooled[order] = pooled.copy()
        return pooled

    encode.info = {"inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                   "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
                   "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
                   "streams": compiled.get_property("NUM_STREAMS")}
    return encode


def _load(kind: str, path: str, threads: int | None, file: str | None):
    """An `encode(texts, batch, head)` function for the variant."""
    if kind == "pytorch":
        return _load_pytorch(path, threads)
    if kind == "st-onnx":
        return _load_st_onnx(path, file or "onnx/model.onnx")
    if kind == "fastembed":
        return _load_fastembed(path, file or "model.onnx", threads)
    if kind == "openvino":
        return _load_openvino(path, file or "fp32/model.xml", threads)
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
    parser.add_argument("path", help="model folder (pytorch, st-onnx, fastembed, openvino) or artifact folder (onnx)")
    parser.add_argument("workload", help="JSON file with 'titles' and 'skills' lists")
    parser.add_argument("--file", default=None,
                        help="st-onnx, fastembed: the ONNX file inside the folder; openvino: the IR's .xml")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--head", default="anchor")
    args = parser.parse_args()

    encode = _load(args.kind, args.path, args.threads, args.file)
    with open(args.workload, encoding="utf-8") as handle:
        workload = json.load(handle)
    encode(workload["titles"][:1], 1, args.head)
    info = getattr(encode, "info", None)
    print(json.dumps({"ready": time.time(), **({"info": info} if info else {})}), flush=True)
    serve(encode, workload, sys.stdin)


# -- the driving side ---------------------------------------------------------------------------
class Worker:
    """A `bench.worker` process run by `python` (default: this one); `started` to `ready` is its
    cold start, and `info` what its ready line reported about the library's settings ({} if nothing)."""

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
        ready = self._read()
        self.cold_start_s = ready["ready"] - self.started
        self.info = ready.get("info", {})

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
