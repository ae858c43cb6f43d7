"""The checkpoint reader's layout (issue 17): one file per module kind in `export/modules/`, which
imports only `base.py`, so that nothing imports in a circle; and reading a checkpoint's configs
imports no torch. Fast lane: no export stack is needed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

EXPORT = Path(__file__).resolve().parents[1] / "export"
KINDS = sorted(p for p in (EXPORT / "modules").glob("*.py") if p.name not in {"__init__.py", "base.py"})


def _relative_imports(path: Path) -> list[tuple[str, bool]]:
    """Each relative import of `path`: (the module it names, whether it sits inside a function)."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.level:
                found.append(("." * child.level + (child.module or ""), in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_each_kind_imports_only_the_base_and_never_inside_a_function():
    assert {p.stem for p in KINDS} == {"transformer", "pooling", "dense", "normalize", "head"}
    for path in KINDS:
        assert {module for module, _ in _relative_imports(path)} == {".base"}, path.name
    assert _relative_imports(EXPORT / "modules" / "base.py") == []
    assert not any(in_function for module, in_function in _relative_imports(EXPORT / "checkpoint.py")), \
        "checkpoint.py imports a sibling inside a function"


def _write(path: Path, config: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config), encoding="utf-8")


def test_reading_a_checkpoint_imports_no_torch(tmp_path):
    """Configs only: the weight files are empty, since reading never opens them."""
    _write(tmp_path / "modules.json", [
        {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    _write(tmp_path / "config.json", {"model_type": "bert", "hidden_size": 8, "num_attention_heads": 2})
    _write(tmp_path / "sentence_bert_config.json", {"max_seq_length": 16})
    _write(tmp_path / "1_Pooling" / "config.json", {"word_embedding_dimension": 8, "pooling_mode": "mean"})
    _write(tmp_path / "2_Dense" / "config.json", {"in_features": 8, "out_features": 4})
    (tmp_path / "3_Normalize").mkdir()
    for folder in (tmp_path, tmp_path / "2_Dense"):
        (folder / "model.safetensors").write_bytes(b"")
    code = ("import sys; from jobbert_onnx.export.checkpoint import read_checkpoint; "
            f"spec = read_checkpoint({str(tmp_path)!r}); "
            "print([m.describe() for m in spec.heads['default'].modules], spec.heads['default'].output_dimension(8), "
            "[m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['Dense(8->4, Tanh)', 'Normalize'] 4 []"
