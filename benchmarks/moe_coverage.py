"""Share of the decoder blocks' matrix weights (by count) that each method makes N:M, on tiny random configs of
seven Mixture-of-Experts architectures (tests/llm/tiny.py), and what stayed dense.

    python benchmarks/moe_coverage.py        # prints a markdown table, writes benchmarks/results/moe_coverage.json

Issue 18 measured 11% (Mixtral, OLMoE), 20% (Qwen3-MoE) and 33% (Qwen2-MoE) before fused expert tensors were
targets.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.llm.tiny import MOE_ARCHS, tiny_moe  # noqa: E402
from torchprox.llm import METHODS, sparsify  # noqa: E402


def main() -> None:
    rows = []
    calib = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))
    for arch in MOE_ARCHS:
        row = {"arch": arch}
        for method in METHODS:
            model = tiny_moe(arch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = sparsify(model, calib, 2, 4, method=method, progress=False,
                                  **({"steps": 2} if method == "proxsparse" else {}))
            cov = report["coverage"]
            row[method] = cov["coverage"]
            row["dense"] = sorted({why.split(" (")[0] for why in cov["dense"].values()})
            row["dense_weights"] = cov["matrix_weights"] - cov["nm_weights"]
            row["matrix_weights"] = cov["matrix_weights"]
        rows.append(row)
    out = ROOT / "benchmarks" / "results" / "moe_coverage.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print("| model (tiny config) | " + " | ".join(METHODS) + " | left dense |")
    print("|---|" + "---|" * (len(METHODS) + 1))
    for r in rows:
        print(f"| {r['arch']} | " + " | ".join(f"{100 * r[m]:.1f}%" for m in METHODS)
              + f" | {r['dense_weights']} of {r['matrix_weights']} weights: {', '.join(r['dense'])} |")


if __name__ == "__main__":
    main()
