"""The ``steerscope`` command line.

Exit codes: 0 success; 2 bad input (unknown model, malformed data, layer out of range, vector
that does not fit the model, existing output without ``--overwrite``, …), reported as one line on
stderr; 1 an unexpected internal error; 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from steerscope.errors import DataError, SteerscopeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Activation steering for language models, with audits of what a vector means.")
datasets_app = typer.Typer(help="List the built-in trait datasets, or validate a JSONL pair file.")
app.add_typer(datasets_app, name="datasets")
audit_app = typer.Typer(help="Audits of what a steering vector means.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
out = Console()
err = Console(stderr=True)

ModelOpt = typer.Option("smollm2-135m", "--model", "-m", help="Built-in name, Hugging Face id or folder, or .gguf file.")
DeviceOpt = typer.Option("auto", "--device", help="cpu, cuda or auto.")
DtypeOpt = typer.Option("float32", "--dtype", help="float32 (default), float64, bfloat16 or float16.")
CacheOpt = typer.Option(None, "--cache-dir", help="Where built-in models are converted (default: $STEERSCOPE_CACHE or ~/.cache/steerscope).")
LayersPathOpt = typer.Option(None, "--layers-path", help="Dotted path of the decoder-block list, if discovery fails.")


def _load(model: str, device: str, dtype: str, cache_dir: Optional[Path], layers_path: Optional[str]):
    from transformers.utils import logging as hf_logging

    from steerscope.models import load_model

    hf_logging.disable_progress_bar()
    with err.status(f"loading {model} (the first load of a built-in model converts it once)"):
        return load_model(model, device=device, dtype=dtype, cache_dir=cache_dir, layers_path=layers_path)


def _layers(values: list[str]) -> list[int]:
    layers = []
    for value in values:
        for part in value.split(","):
            try:
                layers.append(int(part))
            except ValueError:
                raise SteerscopeError(f"--layer expects integers, got {part!r}") from None
    return layers


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the built-in offline models."""
    from steerscope.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL, converted_dir, is_installed

    rows = [
        {"name": m.name, "hf_name": m.hf_name, "architecture": m.architecture, "n_layers": m.n_layers,
         "d_model": m.d_model, "vocab_size": m.vocab_size, "default": m.name == DEFAULT_MODEL,
         "installed": is_installed(m), "converted": (converted_dir(m.name) / "config.json").is_file(),
         "install": m.install_hint}
        for m in BUILTIN_MODELS.values()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Built-in models (any Hugging Face causal LM or .gguf file also works)")
    for col in ("name", "model", "arch", "layers", "d_model", "vocab", "installed", "converted"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"] + (" (default)" if r["default"] else ""), r["hf_name"], r["architecture"], str(r["n_layers"]),
                      str(r["d_model"]), str(r["vocab_size"]), "yes" if r["installed"] else f"no: {r['install']}",
                      "yes" if r["converted"] else "no")
    out.print(table)


@datasets_app.callback(invoke_without_command=True)
def datasets(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """List the built-in trait datasets."""
    if ctx.invoked_subcommand is not None:
        return
    from steerscope.data import dataset_summary

    rows = dataset_summary()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Built-in trait datasets (pairs; evaluation prompts per environment)")
    for col in ("trait", "pairs", "train", "test", "in_distribution", "topic_shift", "genre_shift"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["trait"], str(r["pairs"]), str(r["train"]), str(r["test"]), *(str(v) for v in r["prompts"].values()))
    out.print(table)


@datasets_app.command("validate")
def datasets_validate(file: Path = typer.Argument(..., help="JSONL file of contrastive pairs.")) -> None:
    """Check a JSONL pair file; print every problem as file:line: field: message."""
    from steerscope.data import read_pairs_file

    try:
        pairs = read_pairs_file(file)
    except DataError as exc:
        for problem in exc.problems:
            err.print(problem, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    splits = {s: sum((p.split or "none") == s for p in pairs) for s in sorted({p.split or "none" for p in pairs})}
    out.print(f"{file}: {len(pairs)} valid pairs ({', '.join(f'{k}: {v}' for k, v in splits.items())})", markup=False)


@app.command()
def extract(
    output: Path = typer.Option(..., "--output", "-o", help="Output .safetensors file."),
    layer: list[str] = typer.Option(..., "--layer", "-l", help="Layer(s) ℓ (output of block ℓ); repeat or comma-separate."),
    trait: Optional[str] = typer.Option(None, "--trait", "-t", help="Built-in trait dataset."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Your JSONL pair file."),
    method: str = typer.Option("mean_diff", "--method", help="mean_diff, pca or probe (or a registered method)."),
    position: str = typer.Option("mean", "--position", help="mean (over each completion) or last (its last token)."),
    split: Optional[str] = typer.Option("train", "--split", help="Pairs of this split only ('all' for every pair)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt,
) -> None:
    """Extract a steering vector from contrastive pairs."""
    from steerscope.data import load_pairs
    from steerscope.extract import extract as run_extract, get_method
    from steerscope.fileio import check_output_path

    if (trait is None) == (dataset is None):
        raise SteerscopeError("give exactly one of --trait or --dataset")
    if position not in ("mean", "last"):
        raise SteerscopeError(f"--position must be mean or last, got {position!r}")
    check_output_path(output, overwrite)
    get_method(method)
    wanted_split = None if split in (None, "all") else split
    if dataset is not None:
        try:
            pairs = load_pairs(dataset, wanted_split)
        except SteerscopeError as exc:
            if wanted_split == "train" and "no pairs with split" in str(exc):
                pairs = load_pairs(dataset)  # a file without splits: use every pair
            else:
                raise
    else:
        pairs = load_pairs(trait, wanted_split)
    lm = _load(model, device, dtype, cache_dir, layers_path)
    layers = [lm.check_layer(x) for x in _layers(layer)]
    vec = run_extract(lm, pairs, layers, method=method, position=position, batch_size=batch_size, trait=trait, progress=True)
    vec.save(output, overwrite=overwrite)
    for ell in vec.layers:
        out.print(f"layer {ell}: ‖v‖ = {vec.norm(ell):.3f}, mean ‖h‖ = {vec.metadata['h_norms'][ell]:.3f}")
    out.print(f"wrote {output} ({method}, {len(pairs)} pairs, model {lm.name}, fingerprint {lm.fingerprint})", markup=False)


@app.command()
def generate(
    prompts: list[str] = typer.Argument(..., help="Prompt(s) to complete."),
    vector: Optional[Path] = typer.Option(None, "--vector", "-v", help="Steering vector (.safetensors)."),
    alpha: float = typer.Option(1.0, "--alpha", "-a", help="Strength α in a' = a + α·v."),
    layer: Optional[list[str]] = typer.Option(None, "--layer", "-l", help="Steer only these layers of the vector."),
    positions: str = typer.Option("all", "--positions", help="all, prompt, generated, last or last-K."),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", "-n"),
    seed: int = typer.Option(0, "--seed"),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(1.0, "--top-p"),
    chat: str = typer.Option("auto", "--chat", help="auto (use the chat template if the model has one), always or never."),
    compare: bool = typer.Option(False, "--compare", help="Also generate unsteered, in the same batch."),
    batch_size: int = typer.Option(16, "--batch-size"),
    allow_model_mismatch: bool = typer.Option(False, "--allow-model-mismatch", help="Use a vector made for another model of the same d_model."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt,
) -> None:
    """Generate completions, steered with a vector or not."""
    from steerscope.generate import GenerationConfig, generate as run_generate
    from steerscope.intervene import parse_positions, steer, steer_rows
    from steerscope.vectors import SteeringVector

    if chat not in ("auto", "always", "never"):
        raise SteerscopeError(f"--chat must be auto, always or never, got {chat!r}")
    parse_positions(positions)
    vec = SteeringVector.load(vector) if vector is not None else None
    lm = _load(model, device, dtype, cache_dir, layers_path)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, top_p=top_p, seed=seed, chat=chat)  # type: ignore[arg-type]
    steering, doses, rows = None, {}, list(prompts)
    if vec is not None:
        vec.check_model(lm, allow_model_mismatch)
        steering = steer(lm, vec, alpha, layers=_layers(layer) if layer else None, positions=positions)
        if compare:
            rows = list(prompts) * 2
            sub = {ell: vec.directions[ell] for ell in steering.edits}
            steering = steer_rows(lm, [sub] * len(prompts) + [None] * len(prompts), [alpha] * len(prompts) + [0.0] * len(prompts), positions)
        doses = {ell: vec.dose(alpha, ell) for ell in steering.edits}
    texts = run_generate(lm, rows, config, steering, batch_size=batch_size, progress=True)
    steered, plain = texts[:len(prompts)], texts[len(prompts):]
    if as_json:
        result = {"model": lm.info(), "vector": str(vector) if vector else None, "alpha": alpha if vec else 0.0,
                  "relative_dose": {str(k): v for k, v in doses.items()}, "positions": positions,
                  "config": config.__dict__, "outputs": [
                      {"prompt": p, "completion": c, **({"unsteered": plain[i]} if compare and vec else {})}
                      for i, (p, c) in enumerate(zip(prompts, steered))]}
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    if vec is not None:
        dose_text = ", ".join(f"layer {k}: {v:.3f}" if v is not None else f"layer {k}: n/a" for k, v in doses.items())
        err.print(f"α = {alpha:g}; relative dose α·‖v‖/mean‖h‖ = {dose_text}", markup=False)
    for i, (prompt, completion) in enumerate(zip(prompts, steered)):
        out.print(f"[bold]>>> {prompt}[/bold]")
        if compare and vec is not None:
            out.print("[dim]unsteered:[/dim] " + plain[i].strip(), markup=True, highlight=False)
            out.print(f"[dim]steered (α={alpha:g}):[/dim] " + completion.strip(), highlight=False)
        else:
            out.print(completion.strip(), markup=False, highlight=False)


@app.command("export")
def export_cmd(
    vector: Path = typer.Argument(..., help="Vector file (.safetensors)."),
    gguf: Path = typer.Option(..., "--gguf", help="Output llama.cpp control-vector file (.gguf)."),
    alpha: float = typer.Option(1.0, "--alpha", help="Scale baked into the exported directions."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Export a vector as a llama.cpp control vector (use with --control-vector)."""
    from steerscope.vectors import SteeringVector, export_gguf

    vec = SteeringVector.load(vector)
    export_gguf(vec, gguf, alpha=alpha, overwrite=overwrite)
    out.print(f"wrote {gguf} (layers {vec.layers}, α = {alpha:g})", markup=False)


@app.command("import")
def import_cmd(
    gguf: Path = typer.Argument(..., help="llama.cpp control-vector file (.gguf)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .safetensors file."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Import a llama.cpp control vector (from steerscope, repeng or llama.cpp) as a vector file."""
    from steerscope.vectors import import_gguf

    vec = import_gguf(gguf)
    vec.save(output, overwrite=overwrite)
    out.print(f"wrote {output} (layers {vec.layers}, d_model {vec.d_model})", markup=False)


@app.command()
def info(vector: Path = typer.Argument(..., help="Vector file (.safetensors).")) -> None:
    """Show a vector file's metadata and per-layer norms as JSON."""
    from steerscope.vectors import SteeringVector

    vec = SteeringVector.load(vector)
    print(json.dumps({"metadata": vec.metadata, "norms": {str(k): vec.norm(k) for k in vec.layers}}, indent=2, default=str))


@audit_app.command("identifiability")
def audit_identifiability(
    trait: str = typer.Option(..., "--trait", "-t", help="Built-in trait."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (results.json, summary.md, *.png)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer ℓ (default: 40 % of the depth)."),
    alpha: float = typer.Option(2.0, "--alpha", "-a", help="Strength α of every steered condition."),
    seeds: int = typer.Option(4, "--seeds", help="Number of orthogonal draws u ⊥ v."),
    env: str = typer.Option("in_distribution", "--env", help="in_distribution, topic_shift or genre_shift."),
    n_prompts: int = typer.Option(12, "--prompts", help="Evaluation prompts (the prompt is the statistical unit)."),
    samples: int = typer.Option(3, "--samples", help="Sampled completions per prompt."),
    max_new_tokens: int = typer.Option(24, "--max-new-tokens", "-n"),
    margin: float = typer.Option(0.2, "--margin", help="Equivalence margin in |Hedges' g|."),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(False, "--quick", help="Small run: 2 draws, 8 prompts, 2 samples, 16 tokens."),
    alphas: Optional[str] = typer.Option(None, "--alphas", help="Comma-separated α values: also run the α sweep "
                                          "(v and v+perp at each α; writes alpha_sweep.png)."),
    all_envs: bool = typer.Option(False, "--all-envs", "--envs", help="Also run the behavioural comparison in every "
                                  "environment (writes environments.png)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt,
) -> None:
    """Is the vector identifiable? Test v against v + u (u ⊥ v) with controls and statistics.

    Writes results.json, summary.md and effect_ratio.png (plus alpha_sweep.png with --alphas and
    environments.png with --all-envs; plots need matplotlib).
    """
    from steerscope.audit.identifiability import audit_vectors, run_identifiability
    from steerscope.audit.markdown import identifiability_markdown
    from steerscope.audit.plots import _pyplot, plot_alpha_sweep, plot_effect_ratio, plot_environment_heatmap
    from steerscope.audit.sweep import parse_alphas, run_extensions
    from steerscope.data import ENVIRONMENTS, TRAITS
    from steerscope.fileio import atomic_write, check_output_path

    if trait not in TRAITS:
        raise SteerscopeError(f"unknown trait {trait!r}; built-in traits: {', '.join(TRAITS)}")
    if env not in ENVIRONMENTS:
        raise SteerscopeError(f"unknown environment {env!r}; use one of {', '.join(ENVIRONMENTS)}")
    sweep_alphas = parse_alphas(alphas) if alphas is not None else None
    results_path, summary_path = out_dir / "results.json", out_dir / "summary.md"
    plot_paths = {"effect_ratio": out_dir / "effect_ratio.png"}
    if sweep_alphas:
        plot_paths["alpha_sweep"] = out_dir / "alpha_sweep.png"
    if all_envs:
        plot_paths["environments"] = out_dir / "environments.png"
    for path in (results_path, summary_path, *plot_paths.values()):
        check_output_path(path, overwrite)
    _pyplot()  # fail before loading the model when matplotlib is missing
    if quick:
        seeds, n_prompts, samples, max_new_tokens = 2, 8, 2, 16
    lm = _load(model, device, dtype, cache_dir, layers_path)
    chosen = lm.check_layer(layer) if layer is not None else round(0.4 * lm.n_layers)
    from steerscope.score.base import get_scorer

    scorer = get_scorer(trait)
    with err.status(f"auditing {trait} at layer {chosen} ({seeds} draws, {n_prompts} prompts × {samples} samples)"):
        vectors = audit_vectors(lm, trait, chosen)
        report = run_identifiability(lm, trait, chosen, alpha, n_draws=seeds, env=env, n_prompts=n_prompts,
                                     samples_per_prompt=samples, max_new_tokens=max_new_tokens, seed=seed, margin_g=margin,
                                     scorer=scorer, vectors=vectors)
    if sweep_alphas or all_envs:
        with err.status("running the α sweep / environment comparison"):
            report |= run_extensions(lm, trait, chosen, alpha, alphas=sweep_alphas, all_envs=all_envs, n_draws=seeds,
                                     env=env, n_prompts=n_prompts, samples_per_prompt=samples,
                                     max_new_tokens=max_new_tokens, seed=seed, margin_g=margin, scorer=scorer,
                                     vectors=vectors)
    atomic_write(results_path, lambda tmp: tmp.write_text(json.dumps(report, indent=2, allow_nan=False)), overwrite)
    markdown = identifiability_markdown(report)
    atomic_write(summary_path, lambda tmp: tmp.write_text(markdown), overwrite)
    plot_effect_ratio(report, plot_paths["effect_ratio"], overwrite)
    if "alpha_sweep" in plot_paths:
        plot_alpha_sweep(report["alpha_sweep"], plot_paths["alpha_sweep"], overwrite)
    if "environments" in plot_paths:
        plot_environment_heatmap(report["environments"], plot_paths["environments"], overwrite)
    out.print(markdown, markup=False, highlight=False)
    written = ", ".join(str(p) for p in (results_path, summary_path, *plot_paths.values()))
    out.print(f"wrote {written}", markup=False)


@audit_app.command("reachability")
def audit_reachability(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (results.json, summary.md, *.png)."),
    vector: Optional[Path] = typer.Option(None, "--vector", "-v", help="Steering vector (.safetensors)."),
    trait: Optional[str] = typer.Option(None, "--trait", "-t", help="Built-in trait: use its mean_diff vector at --layer "
                                        "(instead of --vector); also selects the scorer and the instruction baseline."),
    alpha: float = typer.Option(..., "--alpha", "-a", help="Strength α in a' = a + α·v."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Steering layer ℓ (default: the vector's only layer, "
                                        "or 40 % of the depth with --trait)."),
    capture_layer: Optional[int] = typer.Option(None, "--capture-layer", help="Layer whose states are compared (default: ℓ)."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="Text file (one prompt per line) or JSONL with a "
                                                "'prompt' field (default: built-in evaluation prompts)."),
    n_prompts: int = typer.Option(8, "--n-prompts", help="Number of prompts audited."),
    positions: int = typer.Option(12, "--positions", help="Searched positions per prompt (the last ones)."),
    alphas: str = typer.Option("0.5,1,2,4", "--alphas", help="Comma-separated α values of the sweep."),
    sweep_prompts: int = typer.Option(3, "--sweep-prompts", help="Prompts used by the sweep, random control and behaviour."),
    budget: int = typer.Option(128, "--budget", help="Candidates per position for steered states (no exhaustive fallback)."),
    exhaustive_next: bool = typer.Option(False, "--exhaustive-next", help="Search the whole vocabulary at i+1 in the "
                                         "adversarial construction."),
    max_new_tokens: int = typer.Option(24, "--max-new-tokens", "-n"),
    seed: int = typer.Option(0, "--seed"),
    quick: bool = typer.Option(False, "--quick", help="Small run: 3 prompts × 6 positions, α sweep 1,4 on 1 prompt, 12 tokens."),
    allow_model_mismatch: bool = typer.Option(False, "--allow-model-mismatch", help="Use a vector made for another model of the same d_model."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt,
) -> None:
    """Is the steered state reachable by a prompt? Invert natural and steered states and compare.

    Writes results.json, summary.md, positions.png and alpha_sweep.png (plots need matplotlib).
    A failed search is an upper bound on the distance to the reachable set, not a proof.
    """
    from steerscope.audit.identifiability import audit_vectors
    from steerscope.audit.markdown import reachability_markdown
    from steerscope.audit.plots import _pyplot, plot_reachability_positions, plot_reachability_sweep
    from steerscope.audit.reachability import AuditSettings, read_prompts, run_reachability
    from steerscope.audit.sweep import parse_alphas
    from steerscope.data import TRAITS, builtin_prompts
    from steerscope.fileio import atomic_write, check_output_path
    from steerscope.invert import SearchConfig
    from steerscope.vectors import SteeringVector

    if (vector is None) == (trait is None):
        raise SteerscopeError("pass exactly one of --vector and --trait")
    if trait is not None and trait not in TRAITS:
        raise SteerscopeError(f"unknown trait {trait!r}; built-in traits: {', '.join(TRAITS)}")
    paths = {name: out_dir / name for name in ("results.json", "summary.md", "positions.png", "alpha_sweep.png")}
    for path in paths.values():
        check_output_path(path, overwrite)
    _pyplot()
    sweep = tuple(parse_alphas(alphas))
    if quick:
        n_prompts, positions, sweep, sweep_prompts, max_new_tokens = 3, 6, (1.0, 4.0), 1, 12
    vec = SteeringVector.load(vector) if vector is not None else None
    prompts = read_prompts(prompts_file) if prompts_file is not None else None
    lm = _load(model, device, dtype, cache_dir, layers_path)
    if vec is not None:
        vec.check_model(lm, allow_model_mismatch)
        if layer is None and len(vec.layers) != 1:
            raise SteerscopeError(f"the vector has layers {vec.layers}; choose one with --layer")
        chosen = lm.check_layer(layer) if layer is not None else vec.layers[0]
        if chosen not in vec.directions:
            raise SteerscopeError(f"the vector has no direction for layer {chosen}; it has {vec.layers}")
        direction, info = vec.directions[chosen], {"source": str(vector), "method": vec.metadata.get("method")}
        trait_name = vec.metadata.get("trait") or None
    else:
        chosen = lm.check_layer(layer) if layer is not None else round(0.4 * lm.n_layers)
        direction = audit_vectors(lm, trait, chosen)[0].directions[chosen]
        info, trait_name = {"source": f"built-in {trait} pairs (train split), mean_diff", "method": "mean_diff"}, trait
    pool = builtin_prompts(trait_name if trait_name in TRAITS else TRAITS[0], "in_distribution")
    chosen_prompts = (prompts or pool)[:n_prompts]
    calibration = builtin_prompts(TRAITS[0], "topic_shift")[:2]
    scorer = None
    if trait_name in TRAITS:
        from steerscope.score.base import get_scorer

        scorer = get_scorer(trait_name)
    settings = AuditSettings(positions=positions, alphas=sweep, sweep_prompts=sweep_prompts,
                             steered_search=SearchConfig(budget=budget, fallback=False),
                             adversarial_exhaustive=exhaustive_next, max_new_tokens=max_new_tokens, seed=seed)
    with err.status(f"inverting {len(chosen_prompts)} prompts × {positions} positions at layer {chosen}"):
        report = run_reachability(lm, direction, chosen, alpha, chosen_prompts, calibration, capture_layer=capture_layer,
                                  trait=trait_name, scorer=scorer, settings=settings, vector_info=info)
    atomic_write(paths["results.json"], lambda tmp: tmp.write_text(json.dumps(report, indent=2, allow_nan=False)), overwrite)
    markdown = reachability_markdown(report)
    atomic_write(paths["summary.md"], lambda tmp: tmp.write_text(markdown), overwrite)
    plot_reachability_positions(report, paths["positions.png"], overwrite)
    plot_reachability_sweep(report, paths["alpha_sweep.png"], overwrite)
    out.print(markdown, markup=False, highlight=False)
    out.print(f"wrote {', '.join(str(p) for p in paths.values())}", markup=False)


def main() -> None:
    try:
        app()
    except SteerscopeError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
