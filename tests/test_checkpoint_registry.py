"""The checkpoint reader's module table: one type per sentence-transformers module, each reading
its config, knowing its output dimension, building its torch module and describing itself."""

from __future__ import annotations

import json
import shutil
import sys
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from jobbert_onnx.export import checkpoint
from jobbert_onnx.export.checkpoint import MODULE_TYPES, read_checkpoint
from jobbert_onnx.export.modules import dense, head, normalize, pooling
from jobbert_onnx.export.modules.base import CheckpointError
from jobbert_onnx.export.modules.dense import DenseConfig
from jobbert_onnx.export.modules.normalize import NormalizeConfig
from jobbert_onnx.export.modules.pooling import POOLING_FUNCTIONS, POOLING_MODES

pytestmark = pytest.mark.full  # the exporter's checkpoint reader and its torch modules


def _copy(model: Path, target: Path) -> Path:
    shutil.copytree(model, target)
    return target


def _add_module(model: Path, type_name: str, folder: str, config: dict | None = None) -> None:
    """Append a module after the last one in modules.json."""
    modules = json.loads((model / "modules.json").read_text())
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder, "type": type_name})
    (model / "modules.json").write_text(json.dumps(modules))
    (model / folder).mkdir(exist_ok=True)
    if config is not None:
        (model / folder / "config.json").write_text(json.dumps(config))


def test_every_pooling_mode_has_a_torch_function():
    assert set(POOLING_FUNCTIONS) == set(POOLING_MODES)


def test_each_type_builds_its_own_torch_module(jobbert_asym_model):
    spec = read_checkpoint(jobbert_asym_model)
    assert isinstance(spec.pooling.build(), pooling.pooling_class())
    anchor = spec.heads["anchor"].build()
    assert isinstance(anchor, head.head_class())
    assert [type(layer) for layer in anchor.layers] == [dense.dense_class()]
    assert isinstance(NormalizeConfig().build(), normalize.normalize_class())


def test_a_new_head_type_needs_one_table_entry(jobbert_asym_model, tmp_path, monkeypatch):
    """A module kind added to MODULE_TYPES is read, sized and built through its own type; nothing
    falls back to another kind (the old isinstance chain turned any unknown step into Normalize)."""
    import torch

    @dataclass
    class ScaleConfig:
        role: ClassVar[str] = "head"
        factor: float

        @classmethod
        def read(cls, folder, context):
            return cls(json.loads((folder / "config.json").read_text())["factor"])

        def output_dimension(self, input_dimension, where):
            return input_dimension

        def describe(self):
            return f"Scale({self.factor})"

        def build(self):
            factor = self.factor

            class Scale(torch.nn.Module):
                def forward(self, x):
                    return x * factor

            return Scale()

    monkeypatch.setitem(MODULE_TYPES, "Scale", ScaleConfig)
    model = _copy(jobbert_asym_model, tmp_path / "model")
    _add_module(model, "sentence_transformers.models.Scale", "3_Scale", {"factor": 2.0})
    spec = read_checkpoint(model)
    assert [m.describe() for m in spec.heads["anchor"].modules][-1] == "Scale(2.0)"
    head = spec.heads["anchor"].build()
    x = torch.randn(3, spec.pooling.output_dimension)
    plain = spec.heads["anchor"].modules[0].build()(x)
    torch.testing.assert_close(head(x), 2.0 * plain)


@pytest.mark.parametrize("type_name", ["sentence_transformers.models.LayerNorm",
                                       "sentence_transformers.models.WeightedLayerPooling",
                                       "my_package.models.Dense"])
def test_unknown_modules_are_refused_by_name(jobbert_asym_model, tmp_path, type_name):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    _add_module(model, type_name, "3_Extra", {})
    with pytest.raises(CheckpointError, match=type_name.replace(".", r"\.")):
        read_checkpoint(model)


def test_an_encoder_after_pooling_is_refused(jobbert_asym_model, tmp_path):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    _add_module(model, "sentence_transformers.models.Pooling", "3_Pooling",
                {"word_embedding_dimension": 16, "pooling_mode": "mean"})
    with pytest.raises(CheckpointError, match="Pooling module after pooling is not supported"):
        read_checkpoint(model)


def test_module_folders_outside_the_checkpoint_are_refused(jobbert_asym_model, tmp_path):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    outside = tmp_path / "elsewhere"
    shutil.copytree(model / "2_Asym", outside)
    modules = json.loads((model / "modules.json").read_text())
    modules[2]["path"] = "../elsewhere"
    (model / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="leaves the checkpoint"):
        read_checkpoint(model)


def test_dense_dimension_mismatch_names_the_head(jobbert_asym_model, tmp_path):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    config_path = next((model / "2_Asym").glob("*_Dense/config.json"))
    config = json.loads(config_path.read_text())
    config["in_features"] += 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="expects .* inputs but receives"):
        read_checkpoint(model)


@pytest.mark.parametrize("value", ["64", -3, 0, True, 2.5])
def test_bad_dense_sizes_are_refused(jobbert_asym_model, tmp_path, value):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    config_path = next((model / "2_Asym").glob("*_Dense/config.json"))
    config = json.loads(config_path.read_text())
    config["out_features"] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="out_features"):
        read_checkpoint(model)


def test_prompts_are_read(jobbert_asym_model, tmp_path):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    config_path = model / checkpoint.ST_CONFIG
    config = json.loads(config_path.read_text())
    config |= {"prompts": {"title": "Job title: ", "skills": "Skills: "}, "default_prompt_name": "title"}
    config_path.write_text(json.dumps(config))
    prompts = read_checkpoint(model).prompts
    assert prompts.texts == {"title": "Job title: ", "skills": "Skills: "}
    assert prompts.default_name == "title"

    config["default_prompt_name"] = "nope"
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="default_prompt_name 'nope'"):
        read_checkpoint(model)


def test_weightedmean_without_the_prompt_is_refused(jobbert_asym_model, tmp_path):
    model = _copy(jobbert_asym_model, tmp_path / "model")
    pooling = model / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config |= {"pooling_mode_mean_tokens": False, "pooling_mode_weightedmean_tokens": True, "include_prompt": False}
    pooling.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="weightedmean pooling with include_prompt false"):
        read_checkpoint(model)


def test_importing_the_exporter_does_not_load_torch():
    code = ("import sys, jobbert_onnx.export as e; from jobbert_onnx.export.defaults import PRECISIONS; "
            "print(','.join(m for m in ('torch', 'transformers', 'sentence_transformers', 'onnx') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_dense_config_describes_itself(jobbert_asym_model):
    dense = read_checkpoint(jobbert_asym_model).heads["anchor"].modules[0]
    assert isinstance(dense, DenseConfig)
    assert dense.describe() == f"Dense({dense.in_features}->{dense.out_features}, Tanh)"
