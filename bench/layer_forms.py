"""Layer weights below 8 bits with GPTQ: `python -m bench.layer_forms --data PATH`.

The edge issue asks for a compact JobBERT-v3-sized artifact (<= 150 MB) that keeps min cosine
>= 0.99 on real weights. bench/table_forms.py found one sub-8-bit vocabulary table that holds 0.99;
this asks the same of the encoder's layer matmuls (JobBERT-v3: 12 x (4 x 768 x 768 + 2 x 768 x 3072)
= 84.9M weights, 85 MB at int8). Round-to-nearest 4-bit, block 32, on every layer matmul lost too
much on all-mpnet-base-v2 (min cosine 0.908 with int8 activations, bench/results/levers.md), so
this tries GPTQ (Frantar et al., 2022), which rounds one input row at a time and moves each row's
rounding error onto the rows not yet rounded, weighted by the inputs' second moments.

Every MatMul with a constant 2-D fp32 weight in the fp32 encoder of real all-MiniLM-L6-v2 and
all-mpnet-base-v2 is quantized in numpy, dequantized back to fp32 and put in place of its weight
("fake quant"): activations stay fp32, scales are not rounded to fp16, so the cosines are an upper
bound on what a real 4/3/2-bit kernel with quantized activations would give. The vocabulary table
(a Gather) is left alone. GPTQ's statistics H = X^T X of each matmul input come from the fp32
graph (not from the partly quantized one, as the paper's sequential pass does), on calibration
texts disjoint from the evaluation texts (`calibration_texts`): titles[512:768], 8 runs of 150
titles from titles[4500:5700], and 12 titles from titles[768:780] each repeated to fill the
window, because a first run calibrated without them left the repetitive export probe (one
sentence repeated) worse under GPTQ than under round-to-nearest (MPNet, 4-bit: 0.927 against
0.935). Adding them moved plain GPTQ's MPNet title minimum from 0.981 to 0.962 and act-order's
from 0.985 to 0.984: plain GPTQ is sensitive to the calibration set, act-order much less. The
evaluation uses titles[:512] and `full_length_texts`, built from the probes and titles[3000:4500].
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.artifacts import HERE, prepare_artifacts
from bench.machine import machine_info
from bench.measure import write_results
from bench.real_models import minilm_path, mpnet_path
from bench.workload import DataError, full_length_texts, load_tasks, unique_titles
from jobbert_onnx.runtime.vectors import cosine_rows

MODELS = {"minilm": minilm_path, "mpnet": mpnet_path}
JOBBERT_ATTENTION = 12 * 4 * 768 * 768  # q, k, v and the attention output, per layer
JOBBERT_FFN = 12 * 2 * 768 * 3072  # the FFN's intermediate and output dense
JOBBERT_LAYERS = JOBBERT_ATTENTION + JOBBERT_FFN
FFN = r"/layer\.\d+/(intermediate|output)/dense/MatMul$"  # not .../attention/output/dense (BERT)
BAR = 0.99
TARGET_MB = 150
SHIPPED_TABLE = "int8 rows (shipped)"
EVALUATION_TITLES = 512
CALIBRATION_TITLES = slice(512, 768)
CALIBRATION_RUNS = range(4500, 4500 + 8 * 150, 150)  # full_length_texts uses titles[3000:4500]
CALIBRATION_REPEATS = range(768, 780)
CALIBRATION = (f"titles[{CALIBRATION_TITLES.start}:{CALIBRATION_TITLES.stop}]; {len(CALIBRATION_RUNS)} runs of 150 "
               f"titles from titles[{CALIBRATION_RUNS.start}:{CALIBRATION_RUNS.stop}]; and titles"
               f"[{CALIBRATION_REPEATS.start}:{CALIBRATION_REPEATS.stop}] each repeated 80 times (joined by ' ' or "
               "'. '), long texts cut at the window. The evaluation uses titles[:512] and full-length texts built "
               "from the export probes and titles[3000:4500]")


# -- the quantizers ----------------------------------------------------------------------------
def _levels(bits: int, zero_point: bool) -> tuple[int, int]:
    """The integer codes a form stores: [0, 2^bits - 1] with a zero point, else signed."""
    return (0, 2 ** bits - 1) if zero_point else (-2 ** (bits - 1), 2 ** (bits - 1) - 1)


def _grid(rows: np.ndarray, bits: int, zero_point: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point per column of one group of rows ([..., block, N] -> [..., N])."""
    if zero_point:
        # The range always holds 0, so the rounded zero point is a valid code (as in GPTQ's quantizer).
        low, high = np.minimum(rows.min(-2), 0), np.maximum(rows.max(-2), 0)
        scale = np.maximum(high - low, 1e-12) / (2 ** bits - 1)
        return scale, np.round(-low / scale)
    scale = np.maximum(np.abs(rows).max(-2), 1e-12) / (2 ** (bits - 1) - 1)
    return scale, np.zeros_like(scale)


def _round(values: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, zero_point: bool) -> np.ndarray:
    """`values` on the grid scale * (q - zero), q an integer code in range."""
    low, high = _levels(bits, zero_point)
    return (np.clip(np.round(values / scale) + zero, low, high) - zero) * scale


def rtn(weight: np.ndarray, bits: int, block: int, zero_point: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest of a [K, N] weight in blocks of `block` along K (one scale per block and
    output column). Returns the dequantized weight and the [K / block, N] scales and zero points."""
    k, n = weight.shape
    groups = weight.astype(np.float64).reshape(k // block, block, n)
    scale, zero = _grid(groups, bits, zero_point)
    values = _round(groups, scale[:, None], zero[:, None], bits, zero_point)
    return values.reshape(k, n).astype(np.float32), scale, zero


def gptq(weight: np.ndarray, hessian: np.ndarray, bits: int, block: int, zero_point: bool, act_order: bool = False,
         damp: float = 0.01, batch: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for
    Generative Pre-trained Transformers", arXiv:2210.17323) of a [K, N] weight, y = x @ weight.

    GPTQ's "columns" (the input dimension) are this matrix's K rows. Rows are rounded one at a time;
    each row's error, divided by the diagonal of U (upper Cholesky factor of H^-1, U^T U = H^-1,
    H = X^T X over the calibration tokens plus `damp` x its mean diagonal), is subtracted from the
    rows not yet rounded along U's row, which minimizes ||X @ weight - X @ result|| greedily. Updates
    are applied lazily, `batch` rows at a time. Scales are per block of `block` rows and output
    column, computed when a block starts; with `act_order` rows go in order of decreasing H diagonal
    and the scales are fixed up front from the original weight ("static groups"), so the blocks stay
    contiguous along K as block-quantized storage reads them. Returns like `rtn`.
    """
    k, n = weight.shape
    if k % block or batch % block:
        raise ValueError(f"K={k} and batch={batch} must be multiples of block={block}")
    w = weight.astype(np.float64)
    h = hessian.astype(np.float64)  # a copy: dampened below
    dead = np.diag(h) == 0
    h[dead, dead] = 1  # an input never seen in calibration: nothing to compensate it with
    h[np.diag_indices(k)] += damp * np.mean(np.diag(h))
    scale, zero = np.empty((k // block, n)), np.empty((k // block, n))
    if act_order:
        order = np.argsort(-np.diag(h), kind="stable")
        scale[:], zero[:] = _grid(w.reshape(k // block, block, n), bits, zero_point)
    else:
        order = np.arange(k)
    w, h = w[order], h[np.ix_(order, order)]
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    out = np.empty_like(w)
    for start in range(0, k, batch):
        end = min(start + batch, k)
        errors = np.empty((end - start, n))
        for i in range(start, end):
            if i % block == 0 and not act_order:  # the block's rows already carry all earlier updates
                scale[i // block], zero[i // block] = _grid(w[i:i + block], bits, zero_point)
            group = order[i] // block
            out[i] = _round(w[i], scale[group], zero[group], bits, zero_point)
            errors[i - start] = (w[i] - out[i]) / u[i, i]
            w[i + 1:end] -= np.outer(u[i, i + 1:end], errors[i - start])
        w[end:] -= u[start:end, end:].T @ errors  # the lazy update of every later row
    return out[np.argsort(order)].astype(np.float32), scale, zero


@dataclass(frozen=True)
class LayerForm:
    """One way to store the layer matmuls: `bits` per weight in blocks of `block` along K."""

    name: str
    bits: int
    block: int
    zero_point: bool
    gptq: bool = False
    act_order: bool = False
    only: str | None = None  # a node-name regex: quantize only these matmuls, keep the rest fp32

    def quantize(self, weight: np.ndarray, hessian: np.ndarray) -> np.ndarray:
        """`weight` after a round trip through this form (`hessian`: its input's X^T X)."""
        if self.gptq:
            return gptq(weight, hessian, self.bits, self.block, self.zero_point, self.act_order)[0]
        return rtn(weight, self.bits, self.block, self.zero_point)[0]

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per quantized weight: the code, an fp16 scale per block and, with a zero
        point, a zero point of `bits` per block."""
        return self.bits + (16 + (self.bits if self.zero_point else 0)) / self.block

    def layer_mb(self) -> float:
        """MB of JobBERT-v3's layer matmul weights in this form. A form that keeps some matmuls
        (`only`) counts those at int8, as shipped, though they are measured here at fp32."""
        if self.only is None:
            return JOBBERT_LAYERS * self.bits_per_weight / 8 / 1e6
        assert self.only == FFN, "sizes are only known for the FFN split"
        return (JOBBERT_FFN * self.bits_per_weight / 8 + JOBBERT_ATTENTION) / 1e6


FORMS = [
    LayerForm("RTN 4-bit, block 32, symmetric", 4, 32, False),
    LayerForm("RTN 4-bit, block 32, zero point", 4, 32, True),
    LayerForm("GPTQ 4-bit, block 32, zero point", 4, 32, True, gptq=True),
    LayerForm("GPTQ 4-bit, block 32, zero point, act-order", 4, 32, True, gptq=True, act_order=True),
    LayerForm("RTN 3-bit, block 32, zero point", 3, 32, True),
    # act-order beat plain GPTQ at 4 bits in trial runs, so the lower bit widths get their best shot with it
    LayerForm("GPTQ 3-bit, block 32, zero point, act-order", 3, 32, True, gptq=True, act_order=True),
    LayerForm("GPTQ 2-bit, block 16, zero point, act-order", 2, 16, True, gptq=True, act_order=True),
    LayerForm("GPTQ 4-bit, block 32, zero point, act-order, FFN only (rest fp32)", 4, 32, True, gptq=True,
              act_order=True, only=FFN),
]


def calibration_texts(titles: list[str]) -> list[tuple[list[str], int]]:
    """(texts, batch size) pairs that calibrate GPTQ, disjoint from the evaluation texts (`CALIBRATION`)."""
    runs = [" ".join(titles[i:i + 150]) for i in CALIBRATION_RUNS]
    repeats = [(". " if n % 3 == 2 else " ").join([titles[i]] * 80) for n, i in enumerate(CALIBRATION_REPEATS)]
    return [(titles[CALIBRATION_TITLES], 32), (runs + repeats, 4)]


# -- the graph ---------------------------------------------------------------------------------
def layer_matmuls(model) -> list[tuple[str, str, str]]:
    """(node name, input tensor, weight initializer) of every MatMul with a constant 2-D fp32 weight."""
    from jobbert_onnx.export.int8 import _matmul_weight

    initializers = {i.name: i for i in model.graph.initializer}
    found = [(node.name, node.input[0], node.input[1]) for node in model.graph.node
             if _matmul_weight(node, initializers) is not None]
    if len({weight for _, _, weight in found}) != len(found):
        raise ValueError("a weight initializer feeds two MatMuls; quantizing it once per node would not work")
    return found


def input_hessians(model, artifact: Path, tensors: list[str],
                    batches: list[tuple[list[str], int]]) -> dict[str, np.ndarray]:
    """H = X^T X (float64) of each named tensor over the real (unpadded) tokens of the texts in
    `batches` ((texts, batch size) pairs), read as extra outputs of a copy of `model`."""
    import onnx
    from onnx import TensorProto, helper

    from bench.levers import EncoderRunner

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    runner = EncoderRunner(artifact, probe.SerializeToString())
    del probe
    hessians: dict[str, np.ndarray] = {}
    for texts, size in batches:
        for start in range(0, len(texts), size):
            tokens = runner.tokenizer(texts[start:start + size])
            real = tokens["attention_mask"].astype(bool)
            values = runner.session.run(tensors, {n: tokens[n] for n in runner.inputs})
            for name, value in zip(tensors, values):
                if value.shape[:2] != real.shape:
                    raise ValueError(f"{name}: shape {value.shape} is not [batch, tokens, channels]")
                rows = value[real].astype(np.float64)
                hessians[name] = hessians.get(name, 0) + rows.T @ rows
    return hessians


def measure_model(short: str, titles: list[str], long_texts: list[str], calibration: list[tuple[list[str], int]],
                  cache: Path) -> dict:
    """Cosines against the fp32 encoder and weight errors for the fp32 graph with each layer form."""
    import onnx
    from onnx import numpy_helper

    from bench.levers import EncoderRunner

    artifact = prepare_artifacts(MODELS[short](), cache, ("fp32",), name=short)["fp32"]
    model = onnx.load(str(artifact / "encoder.onnx"))
    fp32 = EncoderRunner(artifact, model.SerializeToString())
    reference, reference_long = fp32(titles, 32), fp32(long_texts, 8)
    del fp32
    matmuls = layer_matmuls(model)
    hessians = input_hessians(model, artifact, list(dict.fromkeys(t for _, t, _ in matmuls)), calibration)
    initializers = {i.name: i for i in model.graph.initializer}
    original = {weight: numpy_helper.to_array(initializers[weight]) for _, _, weight in matmuls}
    results = {}
    for form in FORMS:
        chosen = [m for m in matmuls if form.only is None or re.search(form.only, m[0])]
        weight_errors, output_errors = [], []
        for _, _, weight in matmuls:  # every form starts from the fp32 weights
            initializers[weight].CopyFrom(numpy_helper.from_array(original[weight], weight))
        for _, tensor, weight in chosen:
            w, h = original[weight], hessians[tensor]
            quantized = form.quantize(w, h)
            delta = (w - quantized).astype(np.float64)
            weight_errors.append(np.linalg.norm(delta) / np.linalg.norm(w))
            # ||X (W - Wq)|| / ||X W|| over the calibration tokens: what GPTQ minimizes, in sample.
            output_errors.append(np.sqrt((delta * (h @ delta)).sum() / (w * (h @ w)).sum()))
            initializers[weight].CopyFrom(numpy_helper.from_array(quantized, weight))
        runner = EncoderRunner(artifact, model.SerializeToString())
        short_cosine = cosine_rows(reference, runner(titles, 32))
        long_cosine = cosine_rows(reference_long, runner(long_texts, 8))
        del runner
        results[form.name] = {"matmuls": len(chosen), "weight_error": float(np.mean(weight_errors)),
                              "calibration_output_error": float(np.mean(output_errors)),
                              "min_cosine_titles": float(short_cosine.min()),
                              "mean_cosine_titles": float(short_cosine.mean()),
                              "min_cosine_full_length": float(long_cosine.min()),
                              "full_length_cosines": [round(float(c), 5) for c in long_cosine]}
        print(json.dumps({"model": short, "form": form.name} | results[form.name]), file=sys.stderr, flush=True)
    return results


# -- sizes and the budget ----------------------------------------------------------------------
def int8_layers_mb(cache: Path, titles: list[str]) -> float:
    """MB of the layer matmuls' int8 weights and scales in the shipped JobBERT-sized int8 artifact."""
    import onnx
    from onnx import helper

    from bench.reference_model import build_reference_model

    artifact = prepare_artifacts(build_reference_model(cache / "reference-model", titles), cache, ("int8",))["int8"]
    model = onnx.load(str(artifact / "encoder.onnx"), load_external_data=False)
    return sum(int(np.prod(i.dims)) * helper.tensor_dtype_to_np_dtype(i.data_type).itemsize
               for i in model.graph.initializer
               if re.search(r"MatMul_weight_(int8|scale)$", i.name) and "word_embeddings" not in i.name) / 1e6


def layer_budget(table_forms: dict, int8_layers: float) -> dict | None:
    """What `TARGET_MB` leaves for the layers beside the smallest sub-int8 table form that holds `BAR`
    on both models in `table_forms` (bench/results/table_forms.json); None if no such form."""
    shipped = table_forms["jobbert"][SHIPPED_TABLE]
    holding = [name for name in table_forms["jobbert"] if name != SHIPPED_TABLE and all(
        table_forms["models"][short][name][key] >= BAR
        for short in table_forms["models"] for key in ("min_cosine_titles", "min_cosine_full_length"))]
    if not holding:
        return None
    table = min(holding, key=lambda name: table_forms["jobbert"][name]["table_mb"])
    rest = shipped["artifact_mb"] - shipped["table_mb"] - int8_layers  # positions, heads, tokenizer, ...
    layers = TARGET_MB - table_forms["jobbert"][table]["table_mb"] - rest
    return {"table_form": table, "holding_table_forms": holding, "table_mb": table_forms["jobbert"][table]["table_mb"],
            "other_mb": rest, "int8_layers_mb": int8_layers, "layer_mb": layers,
            "bits_per_weight": layers * 1e6 * 8 / JOBBERT_LAYERS}


def to_markdown(result: dict) -> str:
    machine, calibration = result["machine"], result["calibration"]
    lines = ["# Layer matmul forms below 8 bits: size against fidelity", "",
             f"Measured {result['date']} on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores; "
             f"`python -m bench.layer_forms --data DATA` ({result['seconds']:.0f} s). Cosine: each model's fp32 "
             "encoder with every layer matmul weight (the MatMuls with a constant 2-D weight; not the vocabulary "
             "table) in that form, against the unchanged fp32 encoder, on "
             f"{result['titles']} job titles and {result['long_texts']} texts cut at the model's window. "
             "**Fake quant:** weights are quantized and dequantized in numpy, activations stay fp32 and scales are "
             "not rounded to fp16, so these cosines are optimistic: an upper bound for a real low-bit kernel, "
             "which would also quantize activations (the RTN 4-bit block 32 graph with int8 activations measured "
             "0.908 on MPNet in levers.md). GPTQ is calibrated on texts disjoint from the evaluation texts: "
             f"{calibration['description']}; its H = X^T X comes from the fp32 graph. Weight error: mean over the "
             "quantized matmuls of ||W - Wq||_F / ||W||_F. Sizes: JobBERT-v3's "
             f"{JOBBERT_LAYERS / 1e6:.1f}M layer weights in that form (fp16 scales, zero points at the form's bits; "
             "the FFN-only form counts the attention matmuls at int8).", "",
             "| layer form | bits per weight | JobBERT layer MB | MiniLM min (titles / full length) "
             "| MPNet min (titles / full length) | MPNet mean | weight error (MiniLM / MPNet) | >= 0.99 on both |",
             "|---|---|---|---|---|---|---|---|"]
    for name, size in result["jobbert"].items():
        minilm, mpnet = result["models"]["minilm"][name], result["models"]["mpnet"][name]
        lines.append(f"| {name} | {size['bits_per_weight']:.2f} | {size['layer_mb']:.0f} | "
                     f"{minilm['min_cosine_titles']:.5f} / {minilm['min_cosine_full_length']:.5f} | "
                     f"{mpnet['min_cosine_titles']:.5f} / {mpnet['min_cosine_full_length']:.5f} | "
                     f"{mpnet['mean_cosine_titles']:.5f} | {minilm['weight_error']:.4f} / {mpnet['weight_error']:.4f} "
                     f"| {'yes' if _holds(result, name) else 'no'} |")
    rtn = next(iter(result["jobbert"]))  # the baseline comes first
    lines += ["", f"The baseline ({rtn}) keeps MPNet's titles at "
              f"{result['models']['mpnet'][rtn]['min_cosine_titles']:.5f} "
              "with fp32 activations, about what levers.md measured with int8 activations (0.908): at 4 bits the "
              "weights, not the activations, lose the fidelity."]
    best = max(result["jobbert"], key=lambda name: _worst(result, name))
    texts = result["models"]["mpnet"][best]["full_length_cosines"]
    probes, runs = texts[:result["probes"]], texts[result["probes"]:]
    lines += ["", f"Closest to the bar: {best} (worst of the four minima {_worst(result, best):.5f}). On MPNet's "
              f"full-length texts it keeps the {len(runs)} runs of titles at >= {min(runs):.5f}; the "
              f"{len(probes)} export probes (a sentence repeated, the same in Chinese, a skill list) reach "
              f"{' / '.join(f'{c:.5f}' for c in probes)}: GPTQ does best on text like its calibration."]
    budget = result["budget"]
    lines.append("")
    if budget is None:
        lines.append("No sub-int8 table form in table_forms.json holds 0.99 on both models, "
                     "so no layer budget follows.")
        return "\n".join(lines) + "\n"
    fitting = [name for name, size in result["jobbert"].items() if size["layer_mb"] <= budget["layer_mb"]]
    holding = [name for name in fitting if _holds(result, name)]
    held = f"{', '.join(holding)} hold{'s' if len(holding) == 1 else ''} 0.99" if holding else "none holds 0.99"
    verdict = (f"{', '.join(fitting)} fit{'s' if len(fitting) == 1 else ''} it, and {held}" if fitting
               else "no layer form here fits it")
    smallest = min(result["jobbert"], key=lambda name: result["jobbert"][name]["layer_mb"])
    lines += [f"Budget (from table_forms.json): the "
              f"{'only' if len(budget['holding_table_forms']) == 1 else 'smallest'} sub-int8 table form that holds "
              f"0.99 on both models, "
              f"{budget['table_form']}, takes {budget['table_mb']:.0f} MB at JobBERT size; the shipped artifact less "
              f"its int8 table and its {budget['int8_layers_mb']:.1f} MB of int8 layer weights and scales leaves "
              f"{budget['other_mb']:.1f} MB (positions, biases, heads, tokenizer). The {TARGET_MB} MB target therefore "
              f"leaves {budget['layer_mb']:.1f} MB for the layers: {budget['bits_per_weight']:.2f} bits per weight, "
              f"scales included. {verdict[0].upper() + verdict[1:]} (the smallest, {smallest}, is "
              f"{result['jobbert'][smallest]['layer_mb']:.0f} MB); and these cosines are fake-quant upper bounds. "
              f"Conversely, the closest form's {result['jobbert'][best]['layer_mb']:.0f} MB of layers would leave "
              f"{TARGET_MB - budget['other_mb'] - result['jobbert'][best]['layer_mb']:.0f} MB for the table, against "
              f"the {budget['table_mb']:.0f} MB of the table form that holds."]
    return "\n".join(lines) + "\n"


def _worst(result: dict, name: str) -> float:
    return min(result["models"][short][name][key] for short in result["models"]
               for key in ("min_cosine_titles", "min_cosine_full_length"))


def _holds(result: dict, name: str) -> bool:
    return _worst(result, name) >= BAR


def main(argv: list[str] | None = None) -> int:
    import time

    from jobbert_onnx.export.probes import FULL_LENGTH

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="the job-title-similarity folder")
    parser.add_argument("--cache", type=Path, default=HERE / "cache")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        all_titles = unique_titles(load_tasks(args.data))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table_forms = args.results / "table_forms.json"
    if not table_forms.is_file():
        print(f"error: {table_forms} is missing; run `python -m bench.table_forms` first.", file=sys.stderr)
        return 2
    titles = all_titles[:EVALUATION_TITLES]
    long_texts = full_length_texts(all_titles)
    probes = len(FULL_LENGTH)  # full_length_texts: the export probes, then the runs of titles
    calibration = calibration_texts(all_titles)
    models = {short: measure_model(short, titles, long_texts, calibration, args.cache) for short in MODELS}
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
              "titles": len(titles), "long_texts": len(long_texts), "probes": probes,
              "calibration": {"titles": len(calibration[0][0]), "long_texts": len(calibration[1][0]),
                              "description": CALIBRATION},
              "models": models,
              "jobbert": {form.name: {"bits_per_weight": form.layer_mb() * 1e6 * 8 / JOBBERT_LAYERS,
                                      "layer_mb": form.layer_mb()} for form in FORMS},
              "budget": layer_budget(json.loads(table_forms.read_text()), int8_layers_mb(args.cache, all_titles))}
    result["seconds"] = time.perf_counter() - start
    markdown = to_markdown(result)
    write_results(args.results, "layer_forms", result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
