"""The ``steerscope`` command line.

Exit codes: 0 success; 2 bad input (unknown model, malformed data, layer out of range, vector
that does not fit the model, existing output without ``--overwrite``, a run folder whose store is
foreign, corrupted or of another configuration, …), reported as one line on stderr; 1 an
unexpected internal error; 130 interrupted (Ctrl-C; a run folder keeps every finished cell).
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
audit_app = typer.Typer(help="Audits of what a steering vector means: with --trait and --out, the whole pipeline "
                        "(resumable, with an HTML report); a subcommand runs one audit.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
bench_app = typer.Typer(help="Benchmarks with planted ground truth.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
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


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    trait: Optional[list[str]] = typer.Option(None, "--trait", "-t", help="Built-in trait(s); repeat or comma-separate. "
                                              "Several traits share one model load."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (run.sqlite, results.json, report.html, "
                                           "vector files, plots/). Run the same command again to resume."),
    quick: bool = typer.Option(False, "--quick", help="The quick profile (the default): about 4 minutes per trait on 2 CPU cores with smollm2-135m."),
    full: bool = typer.Option(False, "--full", help="The full profile: paper-scale sample sizes (all candidate layers, 64 null-space prompts, 8 reachability prompts; much slower)."),
    seed: int = typer.Option(0, "--seed"),
    target_effect: float = typer.Option(0.8, "--target-effect", help="Strength calibration: the Hedges' g the smallest chosen α must reach."),
    max_ppl_ratio: float = typer.Option(2.0, "--max-ppl-ratio", help="Strength calibration: the largest allowed perplexity ratio "
                                        "(steered text under the unsteered model, relative to unsteered text)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout (progress stays on stderr)."),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt,
) -> None:
    """The whole audit, from model and trait to a reviewed HTML report (or one audit, as a subcommand).

    Stages per trait: layer selection, vector extraction, strength calibration, identifiability,
    null-space geometry, recovery, reachability. Every finished cell is recorded in the run
    folder's SQLite store; after an interruption (Ctrl-C or a kill) the same command resumes.
    """
    if ctx.invoked_subcommand is not None:
        return
    from steerscope import __version__
    from steerscope.audit.pipeline import audit_config
    from steerscope.audit.plots import _pyplot
    from steerscope.runstore import open_run

    if not trait or out_dir is None:
        raise SteerscopeError("steerscope audit needs --trait and --out (or a subcommand: identifiability, nullspace, reachability)")
    if quick and full:
        raise SteerscopeError("choose one of --quick and --full")
    config = audit_config(model, _traits(trait), "full" if full else "quick", seed, target_effect, max_ppl_ratio, dtype)
    _pyplot()  # fail before any work when matplotlib is missing
    store, resumed = open_run(out_dir, config, __version__, " ".join(["steerscope", *sys.argv[1:]]))
    with store:
        if resumed:
            err.print(f"resuming {out_dir}: {store.count()} cells already done", markup=False, soft_wrap=True)
        try:
            _run_audit(store, config, model, device, dtype, cache_dir, layers_path)
        except KeyboardInterrupt:
            store.log("interrupted", f"{store.count()} cells done")
            raise
        _finish(store, resumed, as_json)


def _run_audit(store, config: dict, model: str, device: str, dtype: str, cache_dir: Optional[Path], layers_path: Optional[str]) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from steerscope.audit.pipeline import Auditor, plan_cells

    lm = _load(model, device, dtype, cache_dir, layers_path)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err) as bar:
        task = bar.add_task("audit", total=plan_cells(config))

        def on_cell(key: str, cached: bool) -> None:
            if "/" in key and not key.startswith(("grams/", "maps/")):
                bar.advance(task)
            bar.update(task, description=f"{key}{' (stored)' if cached else ''}")

        Auditor(lm, store, config, on_cell=on_cell).run()
    store.log("finished", f"{store.count()} cells")


def _finish(store, resumed: bool, as_json: bool) -> None:
    """Write the derived files and print the answers (or the JSON summary)."""
    from steerscope.report import write_outputs

    written = write_outputs(store)
    results = json.loads(written["results"].read_text())
    answers = {t: {q: {"status": a["status"], "headline": a["headline"]} for q, a in r["answers"].items()} for t, r in results["traits"].items()}
    if as_json:
        print(json.dumps({"run": str(store.folder), "resumed": resumed, "answers": answers, "timings": store.timings(),
                          "files": {k: str(v) for k, v in written.items()}}, indent=2))
        return
    for t, qs in answers.items():
        out.print(f"[bold]{t}[/bold]")
        for q, a in qs.items():
            out.print(f"  {q}: {a['status']}: {a['headline']}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"report: {written['report']}", markup=False)


@app.command()
def runs(
    root: Path = typer.Argument(Path("runs"), help="Folder holding run folders (or a run folder)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List the audit runs under a folder: model, traits, cells done, status."""
    from steerscope.runstore import list_runs

    if not root.exists():
        raise SteerscopeError(f"{root} does not exist")
    rows = list_runs(root)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"steerscope runs under {root}")
    for col in ("folder", "created", "model", "traits", "profile", "cells", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["folder"], r.get("created", ""), str(r.get("model", "")), ",".join(r.get("traits") or []), str(r.get("profile", "")),
                      str(r.get("cells", "")), r["status"] if r["status"] != "unreadable" else f"unreadable: {r['error']}")
    out.print(table)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="Run folder of `steerscope audit`."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Rebuild report.html, results.json, the vector files and the plots of a run from its store (no model needed)."""
    from steerscope.report import write_outputs
    from steerscope.runstore import RunStore

    with RunStore.open(run_dir, readonly=True) as store:  # the store is only read
        written = write_outputs(store)
    if as_json:
        print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))
    else:
        out.print(f"rebuilt {len(written)} files; report: {written['report']}", markup=False)


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


def _prompt_list(spec: str) -> list[str]:
    """``N`` (that many built-in prompts, mixed over traits and environments) or a text/JSONL file."""
    from steerscope.audit.nullspace import builtin_prompt_mix

    if spec.isdigit():
        return builtin_prompt_mix(int(spec))
    path = Path(spec)
    if not path.is_file():
        raise SteerscopeError(f"--prompts must be a number of built-in prompts or a file, got {spec!r}")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line)["prompt"] for line in lines]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SteerscopeError(f"{path}: every JSONL line must be an object with a 'prompt' field") from None
    return lines


@audit_app.command("nullspace")
def audit_nullspace(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (results.json, summary.md, spectra.png)."),
    layer: list[str] = typer.Option(..., "--layers", "--layer", "-l", help="Layer(s) ℓ; repeat or comma-separate."),
    prompts: str = typer.Option("64", "--prompts", help="Number of built-in prompts, or a .txt (one per line) / .jsonl ('prompt') file."),
    positions: str = typer.Option("-1", "--positions", help="Comma-separated token positions where δ is applied (negative: from the end)."),
    tolerances: str = typer.Option("1e-2,1e-3,1e-4", "--tolerances", help="Relative gain tolerances."),
    trait: Optional[str] = typer.Option(None, "--trait", "-t", help="Also report the gain of this built-in trait's mean_diff vector."),
    vector: Optional[Path] = typer.Option(None, "--vector", "-v", help="Also report the gain of this vector file's directions."),
    chunk: int = typer.Option(144, "--chunk", help="Backward passes batched together (memory vs speed)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt,
) -> None:
    """Which residual directions does the output ignore? Exact Jacobian spectra over many prompts."""
    from steerscope.audit.markdown import nullspace_markdown
    from steerscope.audit.nullspace import nullspace_audit
    from steerscope.audit.plots import _pyplot, plot_spectra
    from steerscope.fileio import atomic_write, check_output_path

    if trait is not None and vector is not None:
        raise SteerscopeError("give at most one of --trait or --vector")
    try:
        tols = [float(t) for t in tolerances.split(",")]
        pos = [int(p) for p in positions.split(",")]
    except ValueError:
        raise SteerscopeError("--tolerances must be numbers and --positions integers, comma-separated") from None
    paths = [out_dir / "results.json", out_dir / "summary.md", out_dir / "spectra.png"]
    for path in paths:
        check_output_path(path, overwrite)
    _pyplot()
    prompt_list = _prompt_list(prompts)
    lm = _load(model, device, dtype, cache_dir, layers_path)
    layers = [lm.check_layer(x) for x in _layers(layer)]
    vectors = None
    if vector is not None:
        from steerscope.vectors import SteeringVector

        vec = SteeringVector.load(vector, lm)
        vectors = vec.directions
    elif trait is not None:
        from steerscope.data import load_pairs
        from steerscope.extract import extract as run_extract

        vectors = run_extract(lm, load_pairs(trait, "train"), layers).directions
    results = nullspace_audit(lm, prompt_list, layers, pos, tols, vectors, progress=True, chunk=chunk)
    atomic_write(paths[0], lambda tmp: tmp.write_text(json.dumps(results, indent=1, allow_nan=False)), overwrite)
    markdown = nullspace_markdown(results)
    atomic_write(paths[1], lambda tmp: tmp.write_text(markdown), overwrite)
    plot_spectra(results, paths[2], overwrite)
    out.print(markdown, markup=False, highlight=False)
    out.print(f"wrote {', '.join(str(p) for p in paths)}", markup=False)


@app.command()
def recover(
    method: str = typer.Option(..., "--method", help="ica, sparse, multienv or crosslayer."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (recovery.json, summary.md, vector.safetensors)."),
    layer: int = typer.Option(..., "--layer", "-l", help="Layer ℓ of the direction."),
    trait: Optional[str] = typer.Option(None, "--trait", "-t", help="Built-in trait."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Your JSONL pair file."),
    env_prompts: int = typer.Option(8, "--env-prompts", help="multienv/crosslayer/sparse --observe jacobian: prompts per environment."),
    environments: Optional[Path] = typer.Option(None, "--environments", help="JSONL with 'prompt' and 'env' fields (default: built-in environments)."),
    later: Optional[str] = typer.Option(None, "--later-layers", help="crosslayer: comma-separated later layers (default ℓ+3, ℓ+6)."),
    dictionary: str = typer.Option("neurons", "--dictionary", help="sparse: neurons, learned, or a .npy/.safetensors file of rows."),
    k: int = typer.Option(8, "--k", help="sparse: number of atoms."),
    observe: str = typer.Option("activations", "--observe", help="sparse: activations or jacobian (what is observed of v)."),
    components: Optional[int] = typer.Option(None, "--components", help="ica: number of components."),
    tol: float = typer.Option(1e-3, "--tol", help="Relative gain tolerance of the remaining class dimension."),
    boot: int = typer.Option(30, "--boot", help="Bootstrap resamples for stability."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt,
) -> None:
    """Recover a trait direction under a structural constraint, with an identifiability report.

    The saved vector is the recovered unit direction (methods recover a direction, not a scale).
    """
    from steerscope.audit.markdown import recovery_markdown
    from steerscope.data import ENVIRONMENTS, builtin_prompts, load_pairs
    from steerscope.fileio import atomic_write, check_output_path
    from steerscope.recover import METHODS
    from steerscope.recover.trait import layer_maps, prompt_grams, recover_trait
    from steerscope.vectors.file import SteeringVector, vector_metadata

    if method not in METHODS:
        raise SteerscopeError(f"unknown recovery method {method!r}; use {', '.join(METHODS)}")
    if (trait is None) == (dataset is None):
        raise SteerscopeError("give exactly one of --trait or --dataset")
    paths = [out_dir / "recovery.json", out_dir / "summary.md", out_dir / "vector.safetensors"]
    for path in paths:
        check_output_path(path, overwrite)
    pairs = load_pairs(trait if trait is not None else dataset, "train" if trait is not None else None)
    lm = _load(model, device, dtype, cache_dir, layers_path)
    layer = lm.check_layer(layer)
    needs_grams = method in ("multienv", "crosslayer") or (method == "sparse" and observe == "jacobian")
    grams = maps = None
    if needs_grams:
        if environments is not None:
            records = [json.loads(line) for line in environments.read_text(encoding="utf-8").splitlines() if line.strip()]
            by_env: dict[str, list[str]] = {}
            for r in records:
                by_env.setdefault(str(r["env"]), []).append(r["prompt"])
        else:
            source = trait if trait is not None else "formality"
            by_env = {e: builtin_prompts(source, e) for e in ENVIRONMENTS}
        with err.status(f"Jacobians at layer {layer} ({env_prompts} prompts × {len(by_env)} environments)"):
            grams = {e: prompt_grams(lm, p[:env_prompts], layer) for e, p in by_env.items()}
    if method == "crosslayer":
        targets = _layers([later]) if later else [x for x in (layer + 3, layer + 6) if x < lm.n_layers]
        first = next(iter(by_env.values()))[:env_prompts]
        with err.status(f"layer maps {layer} → {targets}"):
            maps = layer_maps(lm, first, layer, [lm.check_layer(t) for t in targets])
    with err.status(f"recovering ({method}, {boot} bootstrap resamples)"):
        result = recover_trait(lm, method, pairs, layer, grams=grams, maps=maps, n_boot=boot, seed=seed, tol=tol,
                               n_components=components, dictionary=dictionary, k=k, observe=observe)
    report = result.to_dict() | {"model": lm.name, "trait": trait or str(dataset)}
    atomic_write(paths[0], lambda tmp: tmp.write_text(json.dumps(report, indent=1, allow_nan=False)), overwrite)
    markdown = recovery_markdown(report)
    atomic_write(paths[1], lambda tmp: tmp.write_text(markdown), overwrite)
    import torch

    from steerscope.data.pairs import dataset_hash

    meta = vector_metadata(lm, method=f"recover-{method}", layers=[layer], dataset_hash=dataset_hash(pairs), trait=trait or "",
                           n_pairs=len(pairs))
    SteeringVector({layer: torch.as_tensor(result.direction, dtype=torch.float32)}, meta).save(paths[2], overwrite=overwrite)
    out.print(markdown, markup=False, highlight=False)
    out.print(f"wrote {', '.join(str(p) for p in paths)}", markup=False)


@bench_app.command("recovery")
def bench_recovery(
    seed: int = typer.Option(0, "--seed"),
    boot: int = typer.Option(5, "--boot", help="Bootstrap resamples per case."),
    output: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Planted ground truth: every recovery method with its assumption holding and broken."""
    from steerscope.fileio import atomic_write, check_output_path
    from steerscope.recover.planted import planted_benchmark

    if output is not None:
        check_output_path(output, overwrite)
    with err.status("running the planted recovery problems"):
        rows = planted_benchmark(seed, boot)
    table = Table(title=f"Planted recovery (seed {seed}): correct = recovers when the assumption holds, reports failure when not")
    for col in ("method", "case", "assumption", "cos", "identifiable", "class dim", "stability", "correct"):
        table.add_column(col)
    for r in rows:
        stab = r["stability"]
        table.add_row(r["method"], r["case"], "holds" if r["assumption_holds"] else "broken", f"{r['cos']:.3f}", str(r["identifiable"]),
                      "n/a" if r["class_dim"] is None else str(r["class_dim"]),
                      f"{stab['mean_cos']:.3f} [{stab['ci_low']:.3f}, {stab['ci_high']:.3f}]" if stab else "—", "✔" if r["correct"] else "✘")
    out.print(table)
    if output is not None:
        atomic_write(output, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)), overwrite)
    if not all(r["correct"] for r in rows):
        raise typer.Exit(1)


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
