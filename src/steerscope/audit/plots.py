"""PNG figures of identifiability audit results (matplotlib, Agg backend, imported lazily).

* :func:`plot_effect_ratio` — efficacy relative to v of every steered condition (Figure 1 style);
* :func:`plot_alpha_sweep` — mean trait score against α with the relative dose (Figure 2 style);
* :func:`plot_environment_heatmap` — g(v+perp vs v) per trait × environment, with verdicts;
* spectra, recovery stability and reachability figures, and :func:`plot_calibration` for the full audit.

Every figure is written atomically (temporary file + rename) and closed afterwards.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steerscope.errors import SteerscopeError
from steerscope.fileio import atomic_write
from steerscope.formatting import num

def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SteerscopeError("plotting needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, overwrite: bool) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"), overwrite)
    finally:
        plt.close(fig)


def _f(x: Any) -> float:
    """``x`` as a float, NaN for None."""
    return math.nan if x is None else float(x)


def _ci_bars(ax: Any, xs: Sequence[float], low: Sequence[float], high: Sequence[float]) -> None:
    """Vertical CI lines from ``low`` to ``high`` (bootstrap percentile intervals need not contain
    the point estimate, so they are drawn as intervals, not as ± errors around it)."""
    for x, lo, hi in zip(xs, low, high):
        if math.isfinite(lo) and math.isfinite(hi):
            ax.plot([x, x], [lo, hi], color="black", linewidth=1, marker="_", markersize=8)


def plot_effect_ratio(report: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Efficacy relative to v (90 % CI error bars) of each draw and control on the scalar readouts,
    with the equivalence band ``1 ± δ`` shaded."""
    plt = _pyplot()
    scalars = [r for r in report["readouts"].values() if r["kind"] == "scalar"]
    names = list(dict.fromkeys(n for r in scalars for n in r["conditions"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.6))
    width = 0.8 / max(1, len(scalars))
    for k, result in enumerate(scalars):
        rows = [result["conditions"].get(n, {}) for n in names]
        xs = [i + (k - (len(scalars) - 1) / 2) * width for i in range(len(names))]
        est = [_f(r.get("efficacy")) for r in rows]
        ax.bar(xs, [e if math.isfinite(e) else 0.0 for e in est], width=width, alpha=0.7, label=result["readout"])
        _ci_bars(ax, xs, [_f(r.get("efficacy_low")) for r in rows], [_f(r.get("efficacy_high")) for r in rows])
    delta = float(report["config"]["delta"])
    ax.axhspan(1 - delta, 1 + delta, color="grey", alpha=0.2, label=f"equivalent to v (1 ± {delta:g})")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("efficacy relative to v")
    cfg = report.get("config", {})
    ax.set_title(f"{cfg.get('trait', '')} layer {cfg.get('layer', '')} α={cfg.get('alpha', '')}".strip())
    ax.legend(fontsize=8)
    return _save(fig, path, overwrite)


def plot_alpha_sweep(sweep: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Mean trait score against α for none (horizontal line), v and each v+perp draw."""
    plt = _pyplot()
    points = sorted(sweep["points"], key=lambda p: p["alpha"])
    alphas = [p["alpha"] for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.axhline(_f(sweep.get("mean_none")), color="black", linestyle="--", linewidth=1, label="none")
    ax.plot(alphas, [_f(p["mean_v"]) for p in points], "o-", color="tab:blue", linewidth=2, label="v")
    draws = sorted({d for p in points for d in p["draws"]})
    for i, name in enumerate(draws):
        ys = [_f(p["draws"].get(name, {}).get("mean")) for p in points]
        ax.plot(alphas, ys, "s:", color="tab:orange", alpha=0.8, label="v+perp draws" if i == 0 else None)
    ax.set_xlabel("α")
    ax.set_ylabel("mean trait score")
    ax.legend(fontsize=8)
    doses = [p.get("relative_dose") for p in points]
    if alphas and all(d is not None for d in doses):
        top = ax.twiny()
        top.set_xlim(ax.get_xlim())
        top.set_xticks(alphas)
        top.set_xticklabels([format(d, ".2g") for d in doses], fontsize=8)
        top.set_xlabel("relative dose |α|·‖v‖/‖h‖")
    return _save(fig, path, overwrite)


def _env_blocks(env_results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    blocks = [env_results] if isinstance(env_results, Mapping) else list(env_results)
    if not blocks or any("environments" not in b for b in blocks):
        raise SteerscopeError("environment results must come from environment_runs (a dict with 'environments')")
    return blocks


def plot_environment_heatmap(
    env_results: Mapping[str, Any] | Sequence[Mapping[str, Any]], path: str | os.PathLike, overwrite: bool = False,
) -> Path:
    """Heat map trait × environment of the mean trait-score efficacy of the v+u draws, annotated with the verdict.

    ``env_results`` is one :func:`environment_runs` result or a list of them (one row per trait).
    """
    import numpy as np

    plt = _pyplot()
    blocks = _env_blocks(env_results)
    envs: list[str] = []
    for b in blocks:
        envs += [e for e in b["environments"] if e not in envs]
    traits = [str(b.get("trait", f"#{i}")) for i, b in enumerate(blocks)]
    grid = np.full((len(blocks), len(envs)), np.nan)
    labels = [["" for _ in envs] for _ in blocks]
    for r, b in enumerate(blocks):
        for c, env in enumerate(envs):
            res = b["environments"].get(env)
            if res is None:
                continue
            result = res["trait_score"]
            effs = [_f(result["conditions"][d].get("efficacy")) for d in result["draws"]]
            effs = [e for e in effs if math.isfinite(e)]
            grid[r, c] = float(np.mean(effs)) if effs else np.nan
            labels[r][c] = f"{num(grid[r, c], '.2f')}\n{result['verdict']}"
    finite = grid[np.isfinite(grid)]
    lim = max(0.5, float(np.abs(finite - 1).max())) if finite.size else 1.0
    fig, ax = plt.subplots(figsize=(1.8 * len(envs) + 2, 0.9 * len(blocks) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="coolwarm", vmin=1 - lim, vmax=1 + lim, aspect="auto")
    ax.set_xticks(range(len(envs)))
    ax.set_xticklabels(envs)
    ax.set_yticks(range(len(traits)))
    ax.set_yticklabels(traits)
    for r in range(len(blocks)):
        for c in range(len(envs)):
            ax.text(c, r, labels[r][c], ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="mean efficacy of v+u (1 = like v)")
    ax.set_title("v+u against v by environment (trait-score verdict)")
    return _save(fig, path, overwrite)


def plot_spectra(results: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Normalised singular values of the stacked logit Jacobian per layer, with the covariance spectra."""
    import numpy as np

    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    for layer, entry in results["layers"].items():
        for readout, style in (("logits", "-"), ("logprobs", ":")):
            s = np.asarray(entry[readout]["stacked"]["singular_values"])
            ax.semilogy(np.arange(1, len(s) + 1), np.maximum(s / s[0], 1e-12), style, label=f"layer {layer} {readout}")
        lam = np.asarray(entry["covariance"]["all_tokens"]["eigenvalues"])
        bx.semilogy(np.arange(1, len(lam) + 1), np.maximum(np.sqrt(lam / lam[0]), 1e-12), label=f"layer {layer}")
    for tol in results["config"]["tolerances"]:
        ax.axhline(tol, color="grey", linewidth=0.7, linestyle="--")
    ax.set_xlabel("index")
    ax.set_ylabel("σ / σ_max (stacked Jacobian)")
    ax.set_title(f"{results['model']['name']}: {results['config']['n_prompts']} prompts")
    ax.legend(fontsize=7)
    bx.set_xlabel("index")
    bx.set_ylabel("sqrt(λ / λ_max) (activation covariance)")
    bx.set_title("activation covariance (different object)")
    bx.legend(fontsize=7)
    return _save(fig, path, overwrite)


def plot_stability(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Per (trait, method): the bootstrap mean cosine with the full-data direction (bar, CI) and the
    cosine with the audited vector (black point, CI) against the 0.9 agreement bound; bars are green
    when the method identifies the audited vector, red when it does not, grey when undetermined, and
    hatched when the assumption fails on the data."""
    plt = _pyplot()
    rows = [r for r in rows if r.get("stability")]
    labels = [f"{r.get('trait', '')}\n{r['method']}" for r in rows]
    means = [r["stability"]["mean_cos"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(rows) + 2), 3.8))
    xs = list(range(len(rows)))
    colours = {True: "tab:green", False: "tab:red", None: "tab:grey"}
    bars = ax.bar(xs, means, color=[colours[r.get("identifies")] for r in rows], alpha=0.6, label="stability")
    for bar, r in zip(bars, rows):
        if (r.get("assumption") or {}).get("holds") is False:
            bar.set_hatch("//")
    _ci_bars(ax, xs, [_f(r["stability"]["ci_low"]) for r in rows], [_f(r["stability"]["ci_high"]) for r in rows])
    agree = [(x, r["agreement"]) for x, r in zip(xs, rows) if r.get("agreement")]
    if agree:
        ax.plot([x for x, _ in agree], [_f(a["cos"]) for _, a in agree], "ko", markersize=3, label="cos with the audited vector")
        _ci_bars(ax, [x for x, _ in agree], [_f(a.get("ci_low")) for _, a in agree], [_f(a.get("ci_high")) for _, a in agree])
        ax.axhline(agree[0][1]["bound"], color="black", linestyle=":", linewidth=1)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=7, rotation=90)
    ax.set_ylabel("cosine")
    ax.set_title("recovered directions (green: identifies the audited vector, red: not; hatched: assumption fails)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path, overwrite)


def plot_reachability_positions(report: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Per searched position (aligned at the prompt's end, median over prompts): natural and steered
    best-found distances, displacement ‖steered − natural‖ and margin, with ε and the noise floor (log scale)."""
    import numpy as np

    plt = _pyplot()
    prompts = report["prompts"]
    width = max(len(p["positions"]) for p in prompts)
    series = {key: np.full((len(prompts), width), np.nan) for key in ("natural_distance", "steered_distance", "displacement", "margin")}
    for r, p in enumerate(prompts):
        rows = p["positions"]
        for j, row in enumerate(rows):
            for key in series:
                series[key][r, width - len(rows) + j] = _f(row.get(key))
    xs = list(range(-width, 0))
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    styles = {"natural_distance": ("o-", "tab:green", "natural (best found)"), "steered_distance": ("s-", "tab:red", "steered (best found)"),
              "displacement": ("--", "tab:orange", "‖steered − natural‖"), "margin": (":", "tab:blue", "margin Δ (natural runner-up)")}
    floor = 1e-12
    for key, (fmt, colour, label) in styles.items():
        with np.errstate(all="ignore"):
            ys = np.nanmedian(series[key], axis=0)
        ax.plot(xs, np.maximum(ys, floor), fmt, color=colour, label=label, markersize=4)
    ax.axhline(_f(report["threshold"]["epsilon"]), color="black", linestyle="-.", linewidth=1, label="threshold ε")
    ax.axhline(max(_f(report["threshold"]["noise"]), floor), color="grey", linestyle=":", linewidth=1, label="noise floor")
    ax.set_yscale("log")
    ax.set_xlabel("position (from the end of the prompt)")
    ax.set_ylabel(f"L2 distance at layer {report['config']['capture_layer']}")
    ax.set_title(f"{report['model']['name']}: α={report['config']['alpha']:g} at layer {report['config']['layer']} (median over prompts)")
    ax.legend(fontsize=7)
    return _save(fig, path, overwrite)


def plot_reachability_sweep(report: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Median best-found steered distance and displacement against α, with the random control, ε and the noise floor."""
    plt = _pyplot()
    points = sorted(report["alpha_sweep"], key=lambda p: p["alpha"])
    alphas = [p["alpha"] for p in points]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(alphas, [_f(p["median_steered_distance"]) for p in points], "s-", color="tab:red", label="steered: best found")
    ax.plot(alphas, [_f(p["median_displacement"]) for p in points], "--", color="tab:orange", label="‖steered − natural‖")
    rand = report.get("random_control")
    if rand:
        ax.plot([rand["alpha"]], [_f(rand["median_steered_distance"])], "x", color="black", markersize=9, label="random vector, same norm")
    ax.axhline(_f(report["threshold"]["epsilon"]), color="black", linestyle="-.", linewidth=1, label="threshold ε")
    ax.axhline(max(_f(report["threshold"]["noise"]), 1e-12), color="grey", linestyle=":", linewidth=1, label="noise floor")
    ax.set_yscale("log")
    ax.set_xlabel("α")
    ax.set_ylabel("median L2 distance")
    ax.legend(fontsize=7)
    return _save(fig, path, overwrite)


def plot_calibration(result: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Three panels of a full audit's first stages: held-out separation per candidate layer; effect g
    (with CI) and perplexity ratio (with CI) against α, with the target, the limit and the chosen α."""
    plt = _pyplot()
    sel, strength = result["layer_selection"], result["strength"]
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(12, 3.4))
    layers = [r["layer"] for r in sel["rows"]]
    ax.plot(layers, [r["accuracy"] for r in sel["rows"]], "o-", color="tab:blue")
    ax.axvline(sel["chosen"], color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out pairwise accuracy")
    ax.set_title(f"layer selection (chosen: {sel['chosen']})")
    rows = strength["rows"]
    alphas = [r["alpha"] for r in rows]
    for axis, key, ref, label in ((bx, "g", strength["target_g"], "Hedges' g vs α = 0"),
                                  (cx, "ppl_ratio", strength["max_ppl_ratio"], "perplexity ratio (unsteered model)")):
        axis.plot(alphas, [_f(r[key]) for r in rows], "o-", color="tab:red" if key == "g" else "tab:purple")
        _ci_bars(axis, alphas, [_f(r[f"{key}_low"]) for r in rows], [_f(r[f"{key}_high"]) for r in rows])
        axis.axhline(ref, color="grey", linestyle="--", linewidth=1)
        axis.axvline(strength["alpha"], color="black", linestyle=":", linewidth=1)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("α")
        axis.set_ylabel(label)
    bx.set_title(f"effect (target g ≥ {strength['target_g']:g})")
    cx.set_title(f"coherence (limit × {strength['max_ppl_ratio']:g})")
    return _save(fig, path, overwrite)


def plot_paper(report: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """The paper protocol: Cohen's d against α (v vs v + v⊥ and v vs unsteered, the 0.2 reading
    marked) and the last-token logit L2 distances from v at α = 1."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    rows = report["orthogonal_test"]
    alphas = [r["alpha"] for r in rows]
    left.errorbar(alphas, [_f(r["d_v_vs_perp_mean"]) for r in rows], yerr=[_f(r["d_v_vs_perp_sd"]) for r in rows],
                  marker="o", capsize=3, label="d(v, v + v⊥)")
    left.plot(alphas, [_f(r["d_v_vs_none"]) for r in rows], marker="s", label="d(v, unsteered)")
    left.axhline(0.2, color="grey", linestyle="--", linewidth=1, label="|d| = 0.2 (paper's 'negligible')")
    left.set_xlabel("α (unit-norm v)")
    left.set_ylabel("Cohen's d")
    left.legend(fontsize=7)
    ld = report["logit_distance"]
    names = ["unsteered", "v + v⊥", "same-norm random"]
    right.bar(names, [_f(ld["v_vs_none"]), _f(ld["v_vs_v_plus_perp"]), _f(ld["v_vs_random"])], color="tab:blue", alpha=0.7)
    right.set_ylabel("L2 logit distance from v (α = 1)")
    cfg = report["config"]
    fig.suptitle(f"paper protocol: {cfg['trait']} layer {cfg['layer']}")
    return _save(fig, path, overwrite)


def plot_dose_curve(result: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Dose–benefit–cost: the on-target pair-margin effect, the largest off-target effect (|g|), the
    capability change, the perplexity ratio and the neutral KL against the dose multiple of α
    (the audited strength, multiple 1, marked; its relative dose ‖αv‖/mean‖h‖ in the axis label)."""
    plt = _pyplot()
    doses = [f"{m:g}" for m in result["multiples"]]
    xs = [float(d) for d in doses]
    target = next(r for r in result["matrix"] if r["trait"] == result["target"] and r["readout"] == "pair_margin")
    off = [max((abs(_f(r["doses"][d]["g"])) for r in result["matrix"] if r["trait"] != result["target"]), default=math.nan) for d in doses]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(xs, [_f(target["doses"][d]["g"]) for d in doses], marker="o", label=f"{result['target']} pair margin g")
    _ci_bars(ax, xs, [_f(target["doses"][d]["g_low"]) for d in doses], [_f(target["doses"][d]["g_high"]) for d in doses])
    ax.plot(xs, off, marker="s", label="largest off-target |g|")
    ax.set_ylabel("Hedges' g")
    ax.set_title("benefit and off-target")
    cap = result["capability"]["doses"]
    axes[1].plot(xs, [cap[d]["change"]["mean"] for d in doses], marker="o", color="tab:red")
    _ci_bars(axes[1], xs, [cap[d]["change"]["low"] for d in doses], [cap[d]["change"]["high"] for d in doses])
    axes[1].axhline(0, color="grey", linewidth=0.8)
    axes[1].set_ylabel("capability accuracy change")
    axes[1].set_title(f"capability ({result['capability']['n_items']} items)")
    axes[2].plot(xs, [result["fluency"][d]["ppl_ratio"]["mean"] for d in doses], marker="o", label="perplexity ratio")
    axes[2].plot(xs, [1 + result["kl"][d]["mean"] for d in doses], marker="s", label="1 + neutral KL (nats)")
    axes[2].set_title("fluency and drift (neutral prompts)")
    rel = result.get("relative_doses")
    unit = f"; relative dose {rel[result['multiples'].index(1.0)]:.3g} at α" if rel else ""
    for a in axes:
        a.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        a.set_xscale("log", base=2)
        a.set_xlabel(f"dose (multiple of α = {result['alpha']:g}{unit})")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    return _save(fig, path, overwrite)


def plot_layer_profile(profile: Mapping[str, Any], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Held-out pair-margin effect and neutral KL of each layer's vector at equal relative dose."""
    plt = _pyplot()
    rows = profile["rows"]
    xs = [r["layer"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(xs, [_f(r["effect"]["g"]) for r in rows], marker="o", label="pair-margin g")
    _ci_bars(ax, xs, [_f(r["effect"]["g_low"]) for r in rows], [_f(r["effect"]["g_high"]) for r in rows])
    ax.set_xlabel("layer")
    ax.set_ylabel("Hedges' g")
    ax.axvline(profile["audited_layer"], color="grey", linestyle=":", linewidth=1)
    twin = ax.twinx()
    twin.plot(xs, [r["kl"]["mean"] for r in rows], marker="s", color="tab:red", label="neutral KL")
    twin.set_ylabel("KL (nats)", color="tab:red")
    ax.set_title(f"layer profile at relative dose {profile['relative_dose']:.3g}")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path, overwrite)
