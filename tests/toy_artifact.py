"""A tiny artifact folder built with `onnx.helper` and `tokenizers`, for runtime tests without torch.

Encoder: token_embeddings = E[input_ids] + P[position] + masked mean of E[input_ids] over the
sequence (so padding would leak in if the attention mask were ignored). Pooling: masked mean.
Heads: tanh(x @ W), two different weights and widths. `reference` computes the same in numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from jobbert_onnx.runtime.manifest import EncoderEntry, HeadEntry, Manifest, PoolingEntry, TokenizerEntry

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = "hello world data engineer nurse software developer senior junior python java care red".split()
VOCAB = {token: i for i, token in enumerate(SPECIALS + WORDS)}
HIDDEN = 8
MAX_SEQ_LENGTH = 10
POSITIONS = 32
HEAD_DIMS = {"anchor": 6, "positive": 5}
OPSET = 17

_rng = np.random.default_rng(0)
EMBEDDINGS = _rng.normal(size=(len(VOCAB), HIDDEN)).astype(np.float32)
POSITION_EMBEDDINGS = (0.1 * _rng.normal(size=(POSITIONS, HIDDEN))).astype(np.float32)
HEAD_WEIGHTS = {name: _rng.normal(size=(HIDDEN, dim)).astype(np.float32) for name, dim in HEAD_DIMS.items()}


def build_tokenizer() -> Tokenizer:
    """A lower-case-unaware WordLevel tokenizer with [CLS] ... [SEP]; the manifest asks for lower-casing.

    Padding and truncation are stored in the JSON on purpose: the runtime must ignore them.
    """
    tokenizer = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC()])
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # str.split() in `reference_ids`
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", VOCAB["[CLS]"]), ("[SEP]", VOCAB["[SEP]"])],
    )
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=32)
    tokenizer.enable_truncation(max_length=4)
    return tokenizer


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "toy", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    return model


def _const(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _masked_mean_nodes(values: str, mask: str, out: str, prefix: str) -> list:
    """out = sum(values * mask[..., None], 1) / max(sum(mask, 1), 1e-9)  (sentence-transformers' mean)."""
    n = lambda suffix: f"{prefix}_{suffix}"  # noqa: E731
    return [
        helper.make_node("Cast", [mask], [n("maskf")], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [n("maskf"), "axis_last"], [n("mask3")]),
        helper.make_node("Mul", [values, n("mask3")], [n("masked")]),
        helper.make_node("ReduceSum", [n("masked"), "axis_seq"], [n("sum")], keepdims=0),
        helper.make_node("ReduceSum", [n("mask3"), "axis_seq"], [n("count")], keepdims=0),
        helper.make_node("Max", [n("count"), "eps"], [n("count_safe")]),
        helper.make_node("Div", [n("sum"), n("count_safe")], [out]),
    ]


def _mean_constants() -> list[TensorProto]:
    return [
        _const("axis_last", np.array([-1], dtype=np.int64)),
        _const("axis_seq", np.array([1], dtype=np.int64)),
        _const("eps", np.array(1e-9, dtype=np.float32)),
    ]


def encoder_model() -> onnx.ModelProto:
    ints = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])  # noqa: E731
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["tok"]),
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["seq_len"], axis=0),
        helper.make_node("Range", ["zero", "seq_len", "one"], ["positions"]),
        helper.make_node("Gather", ["P", "positions"], ["pos"]),
        helper.make_node("Add", ["tok", "pos"], ["tok_pos"]),
        *_masked_mean_nodes("tok", "attention_mask", "context", "ctx"),
        helper.make_node("Unsqueeze", ["context", "axis_seq"], ["context3"]),
        helper.make_node("Add", ["tok_pos", "context3"], ["token_embeddings"]),
    ]
    initializers = [
        _const("E", EMBEDDINGS),
        _const("P", POSITION_EMBEDDINGS),
        _const("zero", np.array(0, dtype=np.int64)),
        _const("one", np.array(1, dtype=np.int64)),
        *_mean_constants(),
    ]
    output = helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "seq", HIDDEN])
    return _model(nodes, [ints("input_ids"), ints("attention_mask")], [output], initializers)


def pooling_model() -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT, ["batch", "seq", HIDDEN]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    output = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN])
    nodes = _masked_mean_nodes("token_embeddings", "attention_mask", "sentence_embedding", "pool")
    return _model(nodes, inputs, [output], _mean_constants())


def head_model(name: str) -> onnx.ModelProto:
    weight = HEAD_WEIGHTS[name]
    inputs = [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN])]
    # ONNX names are single-assignment, so the output cannot reuse the input's name.
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", weight.shape[1]])
    nodes = [
        helper.make_node("MatMul", ["sentence_embedding", "W"], ["projected"]),
        helper.make_node("Tanh", ["projected"], ["embedding"]),
    ]
    return _model(nodes, inputs, [output], [_const("W", weight)])


def build(folder: Path) -> Path:
    """Write the toy artifact into `folder` (created) and return it."""
    folder = Path(folder)
    (folder / "heads").mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(folder / "tokenizer.json"))
    onnx.save(encoder_model(), folder / "encoder.onnx")
    onnx.save(pooling_model(), folder / "pooling.onnx")
    for name in HEAD_DIMS:
        onnx.save(head_model(name), folder / "heads" / f"{name}.onnx")
    manifest = Manifest(
        source={"model": "toy", "revision": "test"},
        versions={"jobbert_onnx": "0.1.0"},
        opset=OPSET,
        precision="fp32",
        tokenizer=TokenizerEntry(
            file="tokenizer.json",
            max_seq_length=MAX_SEQ_LENGTH,
            do_lower_case=True,
            pad_token_id=VOCAB["[PAD]"],
            pad_token="[PAD]",
        ),
        encoder=EncoderEntry(file="encoder.onnx", input_names=["input_ids", "attention_mask"], hidden_size=HIDDEN),
        pooling=PoolingEntry(file="pooling.onnx", modes=["mean"], dimension=HIDDEN),
        heads={
            name: HeadEntry(file=f"heads/{name}.onnx", dimension=dim, modules=["Dense"])
            for name, dim in HEAD_DIMS.items()
        },
        default_head="anchor",
        validation={"skipped": "toy artifact"},
    )
    manifest.record_files(folder)
    manifest.save(folder)
    return folder


def reference_ids(text: str) -> list[int]:
    """What the runtime's tokenizer must give for one text: strip, lower, split, truncate."""
    words = text.strip().lower().split()
    ids = [VOCAB.get(w, VOCAB["[UNK]"]) for w in words][: MAX_SEQ_LENGTH - 2]
    return [VOCAB["[CLS]"], *ids, VOCAB["[SEP]"]]


def reference(text: str, head: str = "anchor") -> np.ndarray:
    """The toy model's embedding of one text, computed in numpy (float64)."""
    ids = np.array(reference_ids(text))
    tok = EMBEDDINGS[ids].astype(np.float64)
    token_embeddings = tok + POSITION_EMBEDDINGS[: len(ids)] + tok.mean(axis=0)
    return np.tanh(token_embeddings.mean(axis=0) @ HEAD_WEIGHTS[head])
