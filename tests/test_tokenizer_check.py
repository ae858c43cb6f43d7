"""The tokenizer check: the checkpoint's tokenizer.json against the tokenizer transformers rebuilds
from it, the choice between them (`--tokenizer`), and what each choice puts in the artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from jobbert_onnx.export import CheckpointError, ExportConfig, export_model
from jobbert_onnx.export.calibration import builtin_texts
from jobbert_onnx.export.probes import probe_texts
from jobbert_onnx.export.tokenizer_choice import TokenizerDisagreementWarning, compare_tokenizers
from jobbert_onnx.runtime import Embedder
from jobbert_onnx.runtime.manifest import Manifest, TokenizerEntry
from jobbert_onnx.runtime.tokenization import TextTokenizer
from tests.fixtures import models

from .reference import cosine_rows, st_embeddings
from .test_cli import assert_one_line_error, cli

pytestmark = pytest.mark.full  # imports transformers

SPEC = TokenizerEntry(file="tokenizer.json", max_seq_length=64, do_lower_case=False, pad_token_id=1, pad_token="<pad>")
ZH_SKILLS = next(text for text in probe_texts() if "，" in text)  # the probe with full-width commas
CHECKED = list(dict.fromkeys([*probe_texts(), *builtin_texts()]))  # what an export without --calibration compares


def runtime_ids(tokenizer_json: Path, spec: TokenizerEntry, texts: list[str]) -> list[list[int]]:
    """Each text's ids as the runtime computes them with `tokenizer_json`, padding removed."""
    batch = TextTokenizer.from_file(tokenizer_json, spec)(texts)
    return [row[mask == 1].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def export(model: Path, out: Path, **options) -> Manifest:
    export_model(ExportConfig(model=str(model), output=out, show_progress=False, **options))
    return Manifest.load(out)


def test_transformers_5_drops_the_nfkc_normalizer(jobbert_nfkc_model):
    """What the fixture stands for: AutoTokenizer runs no normalizer, tokenizer.json runs NFKC."""
    auto = AutoTokenizer.from_pretrained(jobbert_nfkc_model)
    assert json.loads(auto.backend_tokenizer.to_str())["normalizer"] is None
    checkpoint = Tokenizer.from_file(str(jobbert_nfkc_model / "tokenizer.json"))
    assert checkpoint.encode("数据，分析").ids == checkpoint.encode("数据,分析").ids
    found = compare_tokenizers(checkpoint, auto.backend_tokenizer, SPEC, ["数据，分析", "Data Scientist", ""])
    assert [d.text for d in found] == ["数据，分析"]
    assert found[0].checkpoint_ids == checkpoint.encode("数据,分析").ids
    assert found[0].transformers_ids == auto("数据，分析")["input_ids"]
    assert auto.unk_token in found[0].transformers_tokens and auto.unk_token not in found[0].checkpoint_tokens


def test_nfkc_beside_precompiled_is_dropped_too(jobbert_asym_model, tmp_path):
    """An XLM-R tokenizer.json with NFKC *and* Precompiled: transformers 5 keeps only Precompiled,
    a per-character table, so texts that NFKC composes across characters then tokenize differently."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(jobbert_asym_model / name, tmp_path / name)
    checkpoint = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    checkpoint.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Precompiled(models.nfkc_charsmap()), normalizers.Replace(Regex(" {2,}"), " ")])
    checkpoint.save(str(tmp_path / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert json.loads(auto.backend_tokenizer.to_str())["normalizer"]["type"] == "Precompiled"
    decomposed = "Te\u0301cnico de mantenimiento"  # e + combining acute: NFKC makes it "é"
    found = compare_tokenizers(checkpoint, auto.backend_tokenizer, SPEC, [*probe_texts(), decomposed])
    assert [d.text for d in found] == [decomposed]


def test_default_ships_transformers_tokenizer_warns_and_records(jobbert_nfkc_model, tmp_path):
    with pytest.warns(TokenizerDisagreementWarning, match=r"for 5 of \d+ probe and calibration texts") as caught:
        manifest = export(jobbert_nfkc_model, tmp_path / "out")
    assert "--tokenizer checkpoint" in str(caught[0].message)
    check = manifest.tokenizer_check
    assert check["chosen"] == "transformers" and check["compared"] is True
    assert check["texts_compared"] == len(CHECKED) and check["probe_disagreements"] == 1
    # The zh probe and the four built-in zh skill lists: the only texts with full-width commas.
    assert check["disagreements"] == 1 + sum("，" in text for text in builtin_texts()) == 5
    example = check["examples"][0]
    assert example["text"] == ZH_SKILLS and example["checkpoint_ids"] != example["transformers_ids"]
    at = next(i for i, (a, b) in enumerate(zip(example["checkpoint_ids"], example["transformers_ids"])) if a != b)
    assert (example["checkpoint_tokens"][at], example["transformers_tokens"][at]) == (",", "<unk>")

    # The artifact tokenizes as transformers does, so every probe is validated against sentence-transformers.
    auto = AutoTokenizer.from_pretrained(jobbert_nfkc_model)
    expected = auto([t.strip() for t in CHECKED], truncation=True, max_length=64)["input_ids"]
    assert runtime_ids(tmp_path / "out" / "tokenizer.json", manifest.tokenizer, CHECKED) == expected
    assert manifest.validation["probe_count"] == len(probe_texts())
    assert manifest.validation["heads"]["anchor"]["min_cosine"] >= 0.99999

    # Manifests written before the tokenizer check still load.
    data = json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    del data["tokenizer_check"]
    assert Manifest.from_dict(data).tokenizer_check == {}


def test_checkpoint_choice_ships_the_file_and_matches_st_on_those_ids(jobbert_nfkc_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    with pytest.warns(TokenizerDisagreementWarning, match="validation leaves out the 1 probe"):
        manifest = export(jobbert_nfkc_model, tmp_path / "out", tokenizer="checkpoint")
    check = manifest.tokenizer_check
    assert check["chosen"] == "checkpoint" and check["disagreements"] == 5
    assert check["probe_disagreements"] == 1

    shipped = json.loads((tmp_path / "out" / "tokenizer.json").read_text(encoding="utf-8"))
    original = json.loads((jobbert_nfkc_model / "tokenizer.json").read_text(encoding="utf-8"))
    for part in ("normalizer", "pre_tokenizer", "model", "post_processor", "added_tokens"):
        assert shipped[part] == original[part], part
    assert (runtime_ids(tmp_path / "out" / "tokenizer.json", manifest.tokenizer, CHECKED)
            == runtime_ids(jobbert_nfkc_model / "tokenizer.json", manifest.tokenizer, CHECKED))

    # Validation compared every probe but the one sentence-transformers tokenizes differently here ...
    assert manifest.validation["probe_count"] == len(probe_texts()) - 1
    assert manifest.validation["heads"]["anchor"]["min_cosine"] >= 0.99999
    # ... and on that one the artifact computes what sentence-transformers computes from the
    # checkpoint's tokenizer.json (as on transformers 4), not what it computes here.
    embedder = Embedder(tmp_path / "out")
    ours = embedder.encode([ZH_SKILLS], head="positive")
    st_here = st_embeddings(jobbert_nfkc_model, [ZH_SKILLS], "positive")
    assert cosine_rows(st_here, ours)[0] < 0.9999
    st_on_file = SentenceTransformer(str(jobbert_nfkc_model), device="cpu", local_files_only=True)
    st_on_file[0].processor = PreTrainedTokenizerFast(
        tokenizer_file=str(jobbert_nfkc_model / "tokenizer.json"), pad_token="<pad>",
        model_input_names=["input_ids", "attention_mask"])
    st_on_file.max_seq_length = manifest.tokenizer.max_seq_length  # sentence-transformers keeps it on the tokenizer
    reference = st_on_file.encode([ZH_SKILLS], task="positive", convert_to_numpy=True)
    assert cosine_rows(reference, ours)[0] >= 0.99999


@pytest.mark.parametrize("fixture", ["jobbert_asym_model", "jobbert_router_model", "bert_model"])
def test_faithful_rebuilds_report_no_disagreement(exported, fixture):
    check = Manifest.load(exported(fixture, "fp32")).tokenizer_check
    assert check["chosen"] == "transformers" and check["texts_compared"] == len(CHECKED)
    assert check["disagreements"] == 0 and check["examples"] == []


def test_cli_flag_and_one_line_warning(jobbert_nfkc_model, tmp_path):
    out = tmp_path / "artifact"
    result = cli("export", jobbert_nfkc_model, out, "--tokenizer", "checkpoint", "--no-validate")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
    assert len(warned) == 1 and warned[0].startswith("jobbert-onnx: warning: the checkpoint's tokenizer.json"), warned
    assert "for 5 of" in warned[0] and "Traceback" not in result.stderr
    assert Manifest.load(out).tokenizer_check["chosen"] == "checkpoint"
    assert f"checkpoint, 5 of {len(CHECKED)} checked texts differ with transformers' tokenizer" in result.stdout

    wrong = cli("export", jobbert_nfkc_model, tmp_path / "other", "--tokenizer", "sentencepiece")
    assert wrong.returncode == 2 and "invalid choice: 'sentencepiece'" in wrong.stderr
    with pytest.raises(ValueError, match="tokenizer 'sentencepiece'"):
        ExportConfig(model="m", output=tmp_path / "x", tokenizer="sentencepiece")


def test_checkpoint_without_tokenizer_json(bert_model, tmp_path):
    """Only slow-tokenizer files (vocab.txt): `checkpoint` refuses with the way out; `transformers`
    ships what transformers builds from them."""
    model = shutil.copytree(bert_model, tmp_path / "model")
    (model / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: missing.*--tokenizer transformers"):
        export(model, tmp_path / "refused", tokenizer="checkpoint")
    assert not (tmp_path / "refused").exists()
    assert_one_line_error(cli("export", model, tmp_path / "refused", "--tokenizer", "checkpoint"),
                          "tokenizer.json: missing", "--tokenizer transformers")

    manifest = export(model, tmp_path / "out")
    assert manifest.tokenizer_check == {
        "chosen": "transformers", "compared": False,
        "reason": "the checkpoint has no tokenizer.json; transformers built the tokenizer from its other files"}
    assert manifest.validation["heads"]["default"]["min_cosine"] >= 0.99999
    texts = ["Senior DATA Scientist", "Pflegefachkraft", "数据分析师"]
    expected = AutoTokenizer.from_pretrained(model)(texts, truncation=True, max_length=manifest.tokenizer.max_seq_length)
    assert runtime_ids(tmp_path / "out" / "tokenizer.json", manifest.tokenizer, texts) == expected["input_ids"]


def test_checkpoint_choice_refuses_when_no_probe_can_be_validated(jobbert_asym_model, tmp_path):
    """A tokenizer.json without its post-processor: transformers adds <s> and </s>, the file does not,
    so no probe gets the same ids and validation against sentence-transformers cannot run."""
    model = shutil.copytree(jobbert_asym_model, tmp_path / "model")
    tokenizer = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["post_processor"] = None
    (model / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    with pytest.warns(TokenizerDisagreementWarning, match=f"for {len(CHECKED)} of {len(CHECKED)}"), \
            pytest.raises(CheckpointError, match="--no-validate"):
        export(model, tmp_path / "out", tokenizer="checkpoint")
    assert not (tmp_path / "out").exists()
