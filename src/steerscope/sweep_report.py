"""The sweep report: the audits of a sweep side by side, from the sweep store alone.

Per audit (one trait of one model at one layer, profile and seed) it compares: the audited layer
and its held-out pair accuracy, the calibrated α, the effect of v against no steering (Hedges' g,
95 % CI), the size of v's equivalence class per readout (the share of v + u, ‖u‖ = ‖v‖, u ⊥ v, whose
effect stays within δ of v's, 95 % CI; small = identifiable), the reachability audit's best-found
distance to a prompt's state relative to the steering displacement (about 1: no prompt found that
comes closer than the unsteered state; near 0: reachable) and the four answers. Files:
``sweep.json`` (every number), ``sweep.md`` (one table per model and trait, rows by layer) and
``sweep.png`` (class share and reachability distance against layer, one line per model and trait).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steerscope.fileio import atomic_write
from steerscope.formatting import ci, num
from steerscope.runstore import RunStore, RunStoreError

#: The readouts of the identifiability audit, in report order.
READOUTS = {"trait_score": "trait score", "pair_margin": "pair margin", "distribution": "next-token distribution"}


def audit_summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a sweep compares, from one audit's ``results.json`` (one trait)."""
    (trait, res), = results["traits"].items()
    selection = res["layer_selection"]
    chosen = selection["chosen"]
    effect = res["identifiability"].get("v_vs_none") or {}
    reach = res["reachability"].get("summary") or {}
    return {
        "audited_layer": chosen, "layer_accuracy": next((r["accuracy"] for r in selection["rows"] if r["layer"] == chosen), None),
        "alpha": res["strength"]["alpha"],
        "effect": {"readout": effect.get("readout"), "g": effect.get("g"), "low": effect.get("g_low"), "high": effect.get("g_high"),
                   "p": effect.get("p_diff")},
        "class_share": {readout: _equal_norm(classes) for readout, classes in (res["identifiability"].get("class_size") or {}).items()},
        "reachability": {"best_over_displacement": reach.get("median_steered_over_displacement"),
                         "best_over_noise": reach.get("median_steered_over_noise"),
                         "natural_recovery": reach.get("natural_exact_recovery"), "verdict": reach.get("verdict")},
        "answers": {key: answer["status"] for key, answer in res["answers"].items()},
    }


def _equal_norm(classes: Mapping[str, Any]) -> dict[str, Any]:
    """A readout's class share at ‖u‖ = ‖v‖ (``classes`` is one row, or rows keyed by the ratio ‖u‖/‖v‖)."""
    if not classes:
        return {}
    row = classes if "fraction" in classes else classes.get("1") or classes[max(classes, key=float)]
    return {key: row.get(key) for key in ("fraction", "low", "high", "n")}


def sweep_results(store: RunStore) -> dict[str, Any]:
    """``sweep.json``: the plan and one entry per audit, in plan order, from the sweep store alone."""
    config = store.run["config"]
    entries = []
    for name in config["audits"]:
        cell = store.get(f"audit/{name}")
        if cell is None:
            raise RunStoreError(f"{store.folder} is incomplete (audit {name} has not finished); run the same sweep command again to finish it")
        entries.append(cell.payload)
    return {"steerscope_version": store.run["version"], "config": config, "audits": entries}


def write_sweep_report(store: RunStore) -> dict[str, Path]:
    """(Re)write ``sweep.json``, ``sweep.md`` and ``sweep.png`` of the sweep folder; returns name → path."""
    results = sweep_results(store)
    folder = store.folder
    plot = plot_sweep(results["audits"], folder / "sweep.png")
    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    written = {"plot": plot, "markdown": atomic_write(folder / "sweep.md", lambda tmp: tmp.write_text(sweep_markdown(results), encoding="utf-8"),
                                                      overwrite=True),
               "results": atomic_write(folder / "sweep.json", lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)}
    return written


def _groups(entries: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """Entries by (model, trait), each group ordered by audited layer, then profile and seed."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for entry in entries:
        groups.setdefault((entry["model"], entry["trait"]), []).append(entry)
    return {k: sorted(v, key=lambda e: (e["audited_layer"], e["profile"], e["seed"])) for k, v in groups.items()}


def sweep_markdown(results: Mapping[str, Any]) -> str:
    """``sweep.md``: one table per model and trait, one row per audit."""
    config = results["config"]
    lines = [f"# Sweep of {len(results['audits'])} audits", "",
             f"Models {', '.join(config['models'])}; traits {', '.join(config['traits'])}; layers {', '.join(map(str, config['layers']))}; "
             f"profiles {', '.join(config['profiles'])}; seeds {', '.join(map(str, config['seeds']))} (steerscope {results['steerscope_version']}).",
             "", "Class share: the share of v + u (‖u‖ = ‖v‖, u ⊥ v) whose effect stays within δ of v's, 95 % CI (small: identifiable). "
             "Reachability: the best-found distance to a prompt's state over the steering displacement (about 1: no prompt came closer "
             "than the unsteered state; near 0: reachable).", "", "![class share and reachability against layer](sweep.png)"]
    header = ["audit", "layer", "profile", "seed", "held-out accuracy", "α", "effect g [95 % CI]",
              *(f"class share: {label}" for label in READOUTS.values()), "reachability", "steers", "identifiable", "reachable"]
    for (model, trait), group in _groups(results["audits"]).items():
        lines += ["", f"## {model}: {trait}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_row(entry)) + " |" for entry in group]
    return "\n".join(lines) + "\n"


def _row(e: Mapping[str, Any]) -> list[str]:
    shares = [e["class_share"].get(r) for r in READOUTS]
    layer = f"{e['audited_layer']}" + ("" if e["layer"] is not None else " (selected)")
    return [f"[{e['name']}]({e['folder']}/report.html)", layer, e["profile"], str(e["seed"]), num(e["layer_accuracy"], ".2f"),
            num(e["alpha"], "g"), ci(e["effect"]["g"], e["effect"]["low"], e["effect"]["high"], ".2f"),
            *(ci(s["fraction"], s["low"], s["high"], ".2f") if s else "n/a" for s in shares),
            num(e["reachability"]["best_over_displacement"], ".3g"), *(e["answers"].get(k, "n/a") for k in ("steers", "identifiable", "reachable"))]


def plot_sweep(entries: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One panel per readout (class share against layer, 95 % CI bars) and one for reachability
    (best-found distance / displacement against layer); a line per model, trait, profile and seed,
    each drawn slightly apart along the layer axis so that their CI bars stay visible."""
    from steerscope.audit.plots import _f, _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(READOUTS) + 1, figsize=(4.2 * (len(READOUTS) + 1), 3.6), squeeze=False)
    lines = [(f"{Path(model).name}: {trait}" + (f" ({profile}, seed {seed})" if len(_lines(group)) > 1 else ""), line)
             for (model, trait), group in _groups(entries).items() for (profile, seed), line in _lines(group).items()]
    for i, (label, line) in enumerate(lines):
        xs = [e["audited_layer"] + 0.04 * (i - (len(lines) - 1) / 2) for e in line]
        for ax, readout in zip(axes[0], READOUTS):
            shares = [e["class_share"].get(readout) or {} for e in line]
            drawn = ax.plot(xs, [_f(s.get("fraction")) for s in shares], marker="o", label=label)
            for x, s in zip(xs, shares):
                if s.get("low") is not None and s.get("high") is not None:
                    ax.plot([x, x], [s["low"], s["high"]], color=drawn[0].get_color(), linewidth=1, marker="_")
        axes[0][-1].plot(xs, [_f(e["reachability"]["best_over_displacement"]) for e in line], marker="o", label=label)
    for ax, readout in zip(axes[0], READOUTS):
        ax.set(title=f"class share: {READOUTS[readout]}", xlabel="layer", ylabel="share within δ (95 % CI)", ylim=(-0.05, 1.05))
    axes[0][-1].set(title="reachability", xlabel="layer", ylabel="best-found distance / displacement")
    axes[0][-1].set_ylim(bottom=0)
    axes[0][-1].ticklabel_format(axis="y", useOffset=False)
    axes[0][-1].legend(fontsize=7)
    for ax in axes[0]:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return _save(fig, path, overwrite=True)


def _lines(group: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], list[Mapping[str, Any]]]:
    lines: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for entry in group:
        lines.setdefault((entry["profile"], entry["seed"]), []).append(entry)
    return lines

