"""A checkpoint with exactly JobBERT-v3's shape and on-disk format, with random weights.

Speed and memory depend on the architecture, not on the weights, so this stands in for the
real model, which cannot be downloaded here: XLM-RoBERTa base (12 layers, hidden 768, 12 heads,
FFN 3072, vocab 250,002, 514 positions), mean pooling, and a legacy `Asym` head with `anchor` and
`positive` Dense 768->1024 tanh branches, saved as sentence-transformers 4 saved JobBERT-v3.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

XLMR_BASE = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                 pad_token_id=1, bos_token_id=0, eos_token_id=2)
HEAD_DIMENSION = 1024
MAX_SEQ_LENGTH = 64
ROUTES = ("anchor", "positive")
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
# A title-only corpus teaches a Unigram model whole words, so titles would split into ~6.5 tokens.
# Capping pieces at 3 characters gives ~9.9, near the ~10.6 that JobBERT-v3's card reports.
TOKENIZER_VOCAB = 8000
TOKENIZER_MAX_PIECE = 3
SEED = 20261125
_STAMP = ".reference-model.json"


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def train_tokenizer(titles: list[str], folder: Path) -> None:
    """Train an XLM-R style Unigram tokenizer on `titles` and save it as transformers expects."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token="<unk>", max_piece_length=TOKENIZER_MAX_PIECE)
    tokenizer.train_from_iterator(titles, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.save(str(folder / "tokenizer.json"))
    special = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
               "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}
    _write_json(folder / "tokenizer_config.json",
                {**special, "model_max_length": 512, "tokenizer_class": "XLMRobertaTokenizer"})
    _write_json(folder / "special_tokens_map.json", special)


def _write_encoder(folder: Path) -> None:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = XLMRobertaModel(XLMRobertaConfig(**XLMR_BASE))
    model.eval().save_pretrained(folder)


def _write_modules(folder: Path) -> None:
    """Pooling and the legacy Asym head, written as sentence-transformers 4 wrote them."""
    import torch
    from safetensors.torch import save_file

    hidden = XLMR_BASE["hidden_size"]
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    _write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Asym", "type": "sentence_transformers.models.Asym"},
    ])
    _write_json(folder / "config_sentence_transformers.json",
                {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    _write_json(folder / "1_Pooling" / "config.json",
                {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
                 "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
                 "pooling_mode_mean_sqrt_len_tokens": False})
    ids = {route: f"{index}_Dense" for index, route in enumerate(ROUTES)}
    generator = torch.Generator().manual_seed(SEED)
    for route, name in ids.items():
        _write_json(folder / "2_Asym" / name / "config.json",
                    {"in_features": hidden, "out_features": HEAD_DIMENSION, "bias": True,
                     "activation_function": "torch.nn.modules.activation.Tanh"})
        weight = torch.randn(HEAD_DIMENSION, hidden, generator=generator) / hidden**0.5
        bias = torch.randn(HEAD_DIMENSION, generator=generator) * 0.02
        save_file({"linear.weight": weight, "linear.bias": bias}, str(folder / "2_Asym" / name / "model.safetensors"))
    _write_json(folder / "2_Asym" / "config.json",
                {"types": {ids[r]: "sentence_transformers.models.Dense" for r in ROUTES},
                 "structure": {r: [ids[r]] for r in ROUTES}, "parameters": {"allow_empty_key": True}})


def _recipe(titles: list[str]) -> dict:
    digest = hashlib.sha256("\n".join(titles).encode()).hexdigest()[:16]
    return {"config": XLMR_BASE, "head": HEAD_DIMENSION, "vocab": TOKENIZER_VOCAB,
            "max_piece": TOKENIZER_MAX_PIECE, "seed": SEED, "titles": digest, "format": 1}


def build_reference_model(folder: Path, titles: list[str]) -> Path:
    """Build the model into `folder` unless the same recipe is already there; returns `folder`."""
    folder = Path(folder)
    recipe = _recipe(titles)
    stamp = folder / _STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == recipe:
        return folder
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    train_tokenizer(titles, staging)
    _write_encoder(staging)
    _write_modules(staging)
    _write_json(staging / _STAMP, recipe)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder
