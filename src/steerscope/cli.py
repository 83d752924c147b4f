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


def _traits(values: list[str]) -> list[str]:
    from steerscope.data import TRAITS

    traits = list(dict.fromkeys(t.strip() for value in values for t in value.split(",") if t.strip()))
    for trait in traits:
        if trait not in TRAITS:
            raise SteerscopeError(f"unknown trait {trait!r}; built-in traits: {', '.join(TRAITS)}")
    if not traits:
        raise SteerscopeError("--trait needs at least one built-in trait")
    return traits


def _identifiability_paths(out_dir: Path, traits: list[str], sweep: bool, all_envs: bool) -> dict[str, Path]:
    """Output files: results.json, summary.md and plots (per-trait names when several traits)."""
    suffix = (lambda t: f"_{t}") if len(traits) > 1 else (lambda t: "")
    paths = {"results": out_dir / "results.json", "summary": out_dir / "summary.md"}
    for t in traits:
        paths[f"effect_ratio{suffix(t)}"] = out_dir / f"effect_ratio{suffix(t)}.png"
        if sweep:
            paths[f"alpha_sweep{suffix(t)}"] = out_dir / f"alpha_sweep{suffix(t)}.png"
    if all_envs:
        paths["environments"] = out_dir / "environments.png"
    return paths


@audit_app.command("identifiability")
def audit_identifiability(
    trait: list[str] = typer.Option(..., "--trait", "-t", help="Built-in trait(s); repeat or comma-separate. "
                                    "Several traits share one model load and one Holm family."),
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
                                  "environment (writes environments.png, a trait × environment heat map)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt,
) -> None:
    """Is the vector identifiable? Test v against v + u (u ⊥ v) with controls and statistics.

    Writes results.json, summary.md and effect_ratio.png (plus alpha_sweep.png with --alphas and
    environments.png with --all-envs; plots need matplotlib). With several traits, results.json
    holds every trait's report under "traits", p-values are Holm-corrected across all traits'
    conditions, and plots are named per trait.
    """
    from steerscope.audit.identifiability import audit_vectors, holm_across_traits, run_identifiability
    from steerscope.audit.markdown import identifiability_markdown, traits_overview_markdown
    from steerscope.audit.plots import _pyplot, plot_alpha_sweep, plot_effect_ratio, plot_environment_heatmap
    from steerscope.audit.sweep import parse_alphas, run_extensions
    from steerscope.data import ENVIRONMENTS
    from steerscope.fileio import atomic_write, check_output_path
    from steerscope.score.base import get_scorer

    traits = _traits(trait)
    if env not in ENVIRONMENTS:
        raise SteerscopeError(f"unknown environment {env!r}; use one of {', '.join(ENVIRONMENTS)}")
    if seeds < 1:
        raise SteerscopeError(f"--seeds must be at least 1, got {seeds}")
    if samples < 1 or max_new_tokens < 1:
        raise SteerscopeError("--samples and --max-new-tokens must be at least 1")
    sweep_alphas = parse_alphas(alphas) if alphas is not None else None
    paths = _identifiability_paths(out_dir, traits, bool(sweep_alphas), all_envs)
    for path in paths.values():
        check_output_path(path, overwrite)
    _pyplot()  # fail before loading the model when matplotlib is missing
    if quick:
        seeds, n_prompts, samples, max_new_tokens = 2, 8, 2, 16
    lm = _load(model, device, dtype, cache_dir, layers_path)
    chosen = lm.check_layer(layer) if layer is not None else round(0.4 * lm.n_layers)
    settings = {"n_draws": seeds, "env": env, "n_prompts": n_prompts, "samples_per_prompt": samples,
                "max_new_tokens": max_new_tokens, "seed": seed, "margin_g": margin}
    reports = {}
    for t in traits:
        scorer = get_scorer(t)
        with err.status(f"auditing {t} at layer {chosen} ({seeds} draws, {n_prompts} prompts × {samples} samples)"):
            vectors = audit_vectors(lm, t, chosen)
            reports[t] = run_identifiability(lm, t, chosen, alpha, scorer=scorer, vectors=vectors, **settings)
        if sweep_alphas or all_envs:
            with err.status(f"{t}: running the α sweep / environment comparison"):
                reports[t] |= run_extensions(lm, t, chosen, alpha, alphas=sweep_alphas, all_envs=all_envs,
                                             scorer=scorer, vectors=vectors, **settings)
    if len(traits) > 1:
        reports = holm_across_traits(reports)
        result = {"traits": reports, "verdict": {t: r["verdict"] for t, r in reports.items()},
                  "holm_family": reports[traits[0]]["summary"]["holm_family"]}
        markdown = "\n".join([traits_overview_markdown(reports)] + [identifiability_markdown(r) for r in reports.values()])
    else:
        result = reports[traits[0]]
        markdown = identifiability_markdown(result)
    atomic_write(paths["results"], lambda tmp: tmp.write_text(json.dumps(result, indent=2, allow_nan=False)), overwrite)
    atomic_write(paths["summary"], lambda tmp: tmp.write_text(markdown), overwrite)
    for t, report in reports.items():
        suffix = f"_{t}" if len(traits) > 1 else ""
        plot_effect_ratio(report, paths[f"effect_ratio{suffix}"], overwrite)
        if sweep_alphas:
            plot_alpha_sweep(report["alpha_sweep"], paths[f"alpha_sweep{suffix}"], overwrite)
    if all_envs:
        plot_environment_heatmap([r["environments"] for r in reports.values()], paths["environments"], overwrite)
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
