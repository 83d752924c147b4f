"""Does steering with each built-in trait vector move held-out pairs toward the trait?

For each model and trait: extract ``mean_diff`` on the train split at one layer, then measure the
mean pair margin ``log p(positive) − log p(negative)`` on the 16 test pairs over an α grid, with
the relative dose of each α. Writes JSON and prints a Markdown table (used in docs/results.md).
Usage: python experiments/trait_margin_sweep.py [--models smollm2-135m gemma3-270m]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import steerscope as ss
from steerscope.data import TRAITS

LAYERS = {"smollm2-135m": 12, "gemma3-270m": 6}
ALPHAS = (-2.0, -1.0, 0.0, 1.0, 2.0, 4.0)


def sweep(name: str, layer: int) -> dict:
    lm = ss.load_model(name, device="cpu")
    rows = []
    for trait in TRAITS:
        vec = ss.extract(lm, ss.builtin_pairs(trait, "train"), [layer])
        test = ss.builtin_pairs(trait, "test")
        margins = []
        for alpha in ALPHAS:
            with ss.steer(lm, vec, alpha):
                m = ss.pair_margins(lm, test)
            margins.append({"alpha": alpha, "dose": vec.dose(alpha, layer), "mean": float(m.mean()),
                            "sem": float(m.std() / len(m) ** 0.5)})
        monotone = all(a["mean"] < b["mean"] for a, b in zip(margins, margins[1:]))
        rows.append({"trait": trait, "layer": layer, "vector_norm": vec.norm(layer), "margins": margins, "monotone": monotone})
        print(f"{name} {trait}: " + ", ".join(f"α={m['alpha']:g}: {m['mean']:.1f}" for m in margins), flush=True)
    return {"model": lm.info(), "rows": rows}


def markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        lines.append(f"\n**{res['model']['name']}**, layer {res['rows'][0]['layer']} (mean margin over 16 test pairs; relative dose at α = 1 in brackets)\n")
        lines.append("| trait | " + " | ".join(f"α = {a:g}" for a in ALPHAS) + " | monotone |")
        lines.append("|---|" + "---|" * (len(ALPHAS) + 1))
        for row in res["rows"]:
            dose1 = next(m["dose"] for m in row["margins"] if m["alpha"] == 1.0)
            cells = [f"{m['mean']:.1f} ± {m['sem']:.1f}" for m in row["margins"]]
            lines.append(f"| {row['trait']} ({dose1:.3f}) | " + " | ".join(cells) + f" | {'yes' if row['monotone'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(LAYERS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "trait_margin_sweep.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = [sweep(name, LAYERS[name]) for name in args.models]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
