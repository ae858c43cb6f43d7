"""Merge the latest results into one report: `python -m bench.report`.

Reads `speed.json` (with the peers' real-weight table when the run had peers), `quality.json`
(and `gpu_check.md` when a GPU run was copied there) from `--results`, writes `summary.md` beside
them, and puts the same text into docs/benchmarks.md between the `<!-- bench:start -->` and
`<!-- bench:end -->` markers, so the docs always quote the last run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.artifacts import HERE
from bench.speed_report import peers_markdown
from bench.speed_report import to_markdown as speed_markdown
from jobbert_onnx.runtime.files import write_atomically
from bench.quality import to_markdown as quality_markdown

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def quality_targets(quality: dict) -> list[dict]:
    """The real-weight int8 fidelity targets, each with its measured figure."""
    int8 = quality["systems"]["onnx-int8"]
    rows = [{"target": "int8 min cosine vs PyTorch fp32, real weights (all titles)",
             "measured": int8["fidelity"]["min_cosine"], "goal": ">= 0.99",
             "met": int8["fidelity"]["min_cosine"] >= 0.99}]
    for language, delta in int8["map_delta"].items():
        rows.append({"target": f"int8 MAP vs PyTorch, {language} (absolute difference)", "measured": abs(delta),
                     "goal": "<= 0.005", "met": abs(delta) <= 0.005})
    return rows


def summary(results: Path) -> str:
    speed = json.loads((results / "speed.json").read_text(encoding="utf-8"))
    quality = json.loads((results / "quality.json").read_text(encoding="utf-8"))
    lines = ["## Speed, memory and size (CPU)", "", speed_markdown(speed).rstrip(), ""]
    peers = peers_markdown(speed)
    if peers:
        lines += ["## Peers on real weights", "", peers.rstrip(), ""]
    lines += ["## Retrieval quality per precision (real weights)", "", quality_markdown(quality).rstrip(), "",
              "| target | measured | goal | met |", "|---|---|---|---|"]
    for t in quality_targets(quality):
        lines.append(f"| {t['target']} | {t['measured']:.5f} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
    gpu = results / "gpu_check.md"
    if gpu.exists():
        lines += ["", "## GPU (`bench/gpu_check.sh`, run on a lent machine, copied here)", "",
                  gpu.read_text(encoding="utf-8").rstrip()]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, text: str) -> bool:
    """Replace the README's marked section with `text`; False when the markers are missing."""
    content = readme.read_text(encoding="utf-8")
    if START not in content or END not in content:
        return False
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    write_atomically(readme, f"{head}{START}\n{text}{END}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--readme", type=Path, default=HERE.parent / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    missing = [name for name in ("speed.json", "quality.json") if not (args.results / name).exists()]
    if missing:
        print(f"error: {args.results}: no {' or '.join(missing)}; run `make bench` first.", file=sys.stderr)
        return 2
    text = summary(args.results)
    write_atomically(args.results / "summary.md", text)
    if not update_readme(args.readme, text):
        print(f"warning: {args.readme} has no {START} ... {END} section; wrote only summary.md", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
