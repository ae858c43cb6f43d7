"""The packages' lazy names (`jobbert_onnx.lazy`): importing a package loads none of its heavy
dependencies, and each name resolves on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobbert_onnx.lazy import lazy_exports


def test_packages_import_without_their_heavy_dependencies():
    code = (
        "import sys\n"
        "import jobbert_onnx.export, jobbert_onnx.datasets, jobbert_onnx.serve\n"
        "loaded = [m for m in ('torch', 'transformers', 'pyarrow', 'starlette', 'uvicorn') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "assert jobbert_onnx.serve.Limits().max_inputs > 0\n"
        "assert jobbert_onnx.datasets.TableEmbedder.__name__ == 'TableEmbedder' and 'pyarrow' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_lazy_exports_resolve_list_and_refuse_unknown_names():
    getattr_, dir_ = lazy_exports("jobbert_onnx.runtime", {"unit_rows": ".vectors", "Manifest": ".manifest"})
    from jobbert_onnx.runtime.vectors import unit_rows

    assert getattr_("unit_rows") is unit_rows
    assert dir_() == ["Manifest", "unit_rows"]
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        getattr_("nope")
