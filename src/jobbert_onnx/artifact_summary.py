"""A person-readable summary of an artifact's manifest, one line per fact.

`jobbert-onnx info` and `export` print it; other surfaces (a server's info endpoint) can reuse
it. It reads only the manifest: no torch, no exporter, no graph is loaded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobbert_onnx.runtime.manifest import Manifest


def summary_lines(manifest: Manifest, folder: str | os.PathLike | None = None) -> list[str]:
    """The summary of `manifest`, starting with an `artifact FOLDER` line when `folder` is given."""
    lines = [f"artifact   {folder}"] if folder is not None else []
    source = manifest.source
    revision = f", revision {source['revision']}" if source.get("revision") else ""
    lines.append(f"source     {source.get('model')} ({source.get('kind')}{revision})")
    lines.append(f"precision  {manifest.precision}, opset {manifest.opset}")
    lines.append(f"tokenizer  max_seq_length {manifest.tokenizer.max_seq_length}, "
                 f"do_lower_case {manifest.tokenizer.do_lower_case}{_tokenizer_choice(manifest.tokenizer_check)}")
    encoder = manifest.encoder
    lines.append(f"encoder    inputs {', '.join(encoder.input_names)}; hidden {encoder.hidden_size}; "
                 f"{encoder.transform.get('method')}")
    plan = encoder.transform.get("plan")
    if plan:  # int8 exports that validated: which of the plans tried was kept (export/int8_plans.py)
        last = plan["attempts"][-1]
        kept = f"{last['fp32_matmuls']} most sensitive matmuls kept fp32" if last["fp32_matmuls"] else "every matmul int8"
        verdict = "meets" if plan["met_margin"] else "misses"
        lines.append(f"int8 plan  {plan['chosen'] + 1} of {len(plan['attempts'])} tried: {kept}; worst probe cosine "
                     f"{last['min_cosine']:.5f} {verdict} the target {plan['target_min_cosine']}")
    lines.append(f"pooling    {'+'.join(manifest.pooling.modes)} -> {manifest.pooling.dimension}")
    for name, head in manifest.heads.items():
        marker = " (default)" if name == manifest.default_head else ""
        parity = manifest.validation.get("heads", {}).get(name)
        figures = f"; min cosine {parity['min_cosine']:.6f}, mean {parity['mean_cosine']:.6f}" if parity else ""
        lines.append(f"head       {name}{marker}: {head.dimension} dims [{', '.join(head.modules) or 'identity'}]{figures}")
    if not manifest.validation.get("performed"):
        lines.append(f"validation not performed: {manifest.validation.get('reason') or 'no reason recorded'}")
    size = sum(entry.size for entry in manifest.files.values())
    lines.append(f"files      {len(manifest.files)}, {size / 1e6:.1f} MB")
    return lines


def _tokenizer_choice(check: dict) -> str:
    """'; CHOSEN, N of M checked texts differ with OTHER', or '' for manifests older than the check."""
    if not check:
        return ""
    other = "transformers' tokenizer" if check["chosen"] == "checkpoint" else "the checkpoint's tokenizer.json"
    text = f"; {check['chosen']}"
    if check.get("compared"):
        text += f", {check['disagreements']} of {check['texts_compared']} checked texts differ with {other}"
    return text
