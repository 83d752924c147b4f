"""The ``steerscope`` command line.

Exit codes: 0 success; 2 bad input (unknown model, malformed data, layer out of range, vector
that does not fit the model, existing output without ``--overwrite``, a run folder whose store is
foreign, corrupted or of another configuration, …), reported as one line on stderr; 1 an
unexpected internal error; 130 interrupted (Ctrl-C; a run folder keeps every finished cell).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Literal, NoReturn, Optional, TypeVar, cast

import typer
from rich.console import Console
from rich.table import Table

from steerscope.errors import DataError, SteerscopeError
from steerscope.formatting import num

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
DeviceMapOpt = typer.Option(None, "--device-map", help="Spread a model too big for one device with accelerate: auto, balanced, "
                            "balanced_low_0 or sequential (GPUs, then CPU RAM, then disk), cpu-offload or disk-offload "
                            "(decoder blocks kept in CPU RAM or on disk, run on the GPU).")
MaxMemoryOpt = typer.Option(None, "--max-memory", help="With --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB "
                            "(devices left out are not used).")
SeedOpt = typer.Option(0, "--seed", min=0, max=2**32 - 1, help="Random seed, 0 to 2**32 - 1.")
BatchOpt = typer.Option(16, "--batch-size", min=1, help="Texts per forward pass.")


def _finite(value: float) -> float:
    """A float option's value, refused when NaN or infinite."""
    if not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, got {value}")
    return value


def _position_spec(value: str) -> str:
    """A --positions value as :func:`steerscope.intervene.parse_positions` reads it, with ``last-K`` bounded to 64 bits."""
    from steerscope.intervene import parse_positions

    if parse_positions(value)[1] >= 2**63:
        raise typer.BadParameter(f"last-K needs K below 2**63, got {value!r}")
    return value


def _or(value: Any, default: Any) -> Any:
    """``value``, or ``default`` when the option was not given (0 is a value, not a missing option)."""
    return default if value is None else value


def _load(model: str, device: str, dtype: str, cache_dir: Optional[Path], layers_path: Optional[str],
          device_map: Optional[str] = None, max_memory: Optional[str] = None):
    from transformers.utils import logging as hf_logging

    from steerscope.models import load_model
    from steerscope.models.loading import Placement, format_memory

    placement = Placement.parse(device_map, max_memory)
    hf_logging.disable_progress_bar()
    with err.status(f"loading {model} (the first load of a built-in model converts it once)"):
        lm = load_model(model, device=device, dtype=dtype, cache_dir=cache_dir, layers_path=layers_path, placement=placement)
    if placement is not None:
        err.print(f"{lm.name} placed by accelerate ({device_map}): {format_memory(lm.memory_by_device())}", markup=False, soft_wrap=True)
    return lm


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

    rows: list[dict[str, Any]] = [
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
    envs = {e: sum(p.environment == e for p in pairs) for e in dict.fromkeys(p.environment for p in pairs if p.environment)}
    counts = ", ".join(f"{k}: {v}" for k, v in splits.items()) + ("; environments " + ", ".join(f"{k}: {v}" for k, v in envs.items()) if envs else "")
    out.print(f"{file}: {len(pairs)} valid pairs ({counts})", markup=False, soft_wrap=True)


@app.command()
def extract(
    output: Path = typer.Option(..., "--output", "-o", help="Output .safetensors file."),
    layer: list[str] = typer.Option(..., "--layer", "-l", help="Layer(s) ℓ (output of block ℓ); repeat or comma-separate."),
    trait: Optional[str] = typer.Option(None, "--trait", "-t", help="Built-in trait dataset."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Your JSONL pair file."),
    method: str = typer.Option("mean_diff", "--method", help="mean_diff, pca or probe (or a registered method)."),
    position: str = typer.Option("mean", "--position", help="mean (over each completion) or last (its last token)."),
    split: Optional[str] = typer.Option("train", "--split", help="Pairs of this split only ('all' for every pair)."),
    batch_size: int = BatchOpt,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Extract a steering vector from contrastive pairs."""
    from steerscope.data.traits import extraction_pairs
    from steerscope.extract import extract as run_extract, get_method
    from steerscope.fileio import check_output_path

    mode: Literal["mean", "last"] = _choice(position, ("mean", "last"), "--position")
    check_output_path(output, overwrite)
    get_method(method)
    pairs = extraction_pairs(trait, dataset, split)
    lm = _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory)
    layers = [lm.check_layer(x) for x in _layers(layer)]
    vec = run_extract(lm, pairs, layers, method=method, position=mode, batch_size=batch_size, trait=trait, progress=True)
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
    positions: str = typer.Option("all", "--positions", help="all, prompt, generated, last or last-K.", callback=_position_spec),
    max_new_tokens: int = typer.Option(40, "--max-new-tokens", "-n"),
    seed: int = SeedOpt,
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0, "--temperature", callback=_finite),
    top_p: float = typer.Option(1.0, "--top-p"),
    chat: str = typer.Option("auto", "--chat", help="auto (use the chat template if the model has one), always or never."),
    compare: bool = typer.Option(False, "--compare", help="Also generate unsteered, in the same batch."),
    batch_size: int = BatchOpt,
    allow_model_mismatch: bool = typer.Option(False, "--allow-model-mismatch", help="Use a vector made for another model of the same d_model."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Generate completions, steered with a vector or not."""
    from steerscope.generate import SteerRequest, generate_steered

    config = _generation_config(max_new_tokens, sample, temperature, top_p, seed, chat)
    vec = _steering_vector(vector, alpha)
    request = SteerRequest(vec, alpha, _layers(layer) if layer else None, positions, compare, allow_model_mismatch) if vec is not None else None
    lm = _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory)
    run = generate_steered(lm, prompts, config, request, batch_size=batch_size, progress=True)
    if as_json:
        return print(json.dumps(run.to_json(lm.info(), str(vector) if vector else None), indent=2, ensure_ascii=False))
    if run.doses:
        err.print(f"α = {alpha:g}; relative dose α·‖v‖/mean‖h‖ = " + ", ".join(f"layer {k}: {num(v, '.3f')}" for k, v in run.doses.items()), markup=False)
    for output in run.outputs():
        out.print(f"[bold]>>> {output['prompt']}[/bold]")
        if "unsteered" in output:
            out.print("[dim]unsteered:[/dim] " + output["unsteered"].strip(), markup=True, highlight=False)
            out.print(f"[dim]steered (α={alpha:g}):[/dim] " + output["completion"].strip(), highlight=False)
        else:
            out.print(output["completion"].strip(), markup=False, highlight=False)


#: The lowest --temperature with --sample: below it sampling picks the most likely token anyway (a logit gap
#: of 0.01 is a probability ratio of e^100), and far below it logits / T overflow float32.
MIN_TEMPERATURE = 1e-4


def _generation_config(max_new_tokens: int, sample: bool, temperature: float, top_p: float, seed: int, chat: str):
    """generate's decoding options, checked before the model loads."""
    from steerscope.generate import GenerationConfig

    if sample and temperature < MIN_TEMPERATURE:
        raise SteerscopeError(f"--temperature must be at least {MIN_TEMPERATURE:g} with --sample, got {temperature:g} "
                              "(leave out --sample for greedy decoding)")
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature, top_p=top_p, seed=seed,
                              chat=_choice(chat, ("auto", "always", "never"), "--chat"))
    config.validate()
    return config


def _steering_vector(path: Optional[Path], alpha: float):
    """generate's --vector (None without one), checked with its --alpha before the model loads."""
    from steerscope.vectors import SteeringVector

    if path is None:
        return None
    vec = SteeringVector.load(path)
    vec.check_alpha(alpha)
    return vec


Choice = TypeVar("Choice", bound=str)


def _choice(value: str, allowed: tuple[Choice, ...], option: str) -> Choice:
    if value not in allowed:
        raise SteerscopeError(f"{option} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")
    return cast(Choice, value)


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
    from steerscope.data.traits import check_traits

    return check_traits([t.strip() for value in values for t in value.split(",") if t.strip()])


TraitsOpt = typer.Option(None, "--trait", "-t", help="Built-in trait(s); repeat or comma-separate. Several traits share one model load.")
DatasetOpt = typer.Option(None, "--dataset", help="Your own trait: a JSONL pair file (pairs without a 'split' are split "
                          "75/25 by content hash). Without --scorer it has no trait-score readout.")
PromptsOpt = typer.Option(None, "--prompts", help="Evaluation prompts of the --dataset trait (text, or JSONL with 'prompt' and "
                          "optional 'env'); default: the pairs' questions.")
NameOpt = typer.Option(None, "--name", help="Name of the --dataset trait in the report (default: the file's stem).")
InstructionsOpt = typer.Option(None, "--instructions", help="Your trait's poles as instructions, given twice: the positive pole's, then "
                               "the negative pole's (the robustness audit's supporting/opposing instructions, the reachability "
                               "audit's black-box baseline).")
ScorerOpt = typer.Option(None, "--scorer", help="Trait-score readout: vader, builtin:TRAIT, probe:LABELLED.jsonl, judge:DESCRIPTION, "
                         "hf:PATH[:LABEL], or none (the pair margin and the next-token distribution carry the audit; "
                         "default: each built-in trait's own scorer, none for --dataset).")


VectorOpt = typer.Option(None, "--vector", help="Audit this vector instead of extracting one (no layer selection): steerscope "
                         ".safetensors, llama.cpp/repeng .gguf, a safetensors or .pt tensor dict, or .npy. One trait only.")
VectorLayerOpt = typer.Option(None, "--layer", help="With --vector: the layer to audit, when the file has several.")


def _audit_inputs(traits: Optional[list[str]], user: dict[str, Any], command: bool = False):
    """The library's reading of the trait options (``command``: a single-audit subcommand's)."""
    from steerscope.audit.inputs import audit_inputs, command_inputs

    return (command_inputs if command else audit_inputs)(_traits(traits) if traits else [], **user)


def _given(**values: Any) -> dict[str, Any]:
    """The options that were given (not None)."""
    return {k: v for k, v in values.items() if v is not None}


@audit_app.callback(invoke_without_command=True)
def audit(
    ctx: typer.Context,
    trait: Optional[list[str]] = TraitsOpt, dataset: Optional[Path] = DatasetOpt, prompts: Optional[Path] = PromptsOpt, name: Optional[str] = NameOpt, scorer: Optional[str] = ScorerOpt,
    vector: Optional[Path] = VectorOpt, layer: Optional[int] = VectorLayerOpt, instructions: Optional[list[str]] = InstructionsOpt,
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (run.sqlite, results.json, report.html, "
                                           "vector files, plots/). Run the same command again to resume."),
    quick: bool = typer.Option(False, "--quick", help="The quick profile (the default): about 4 minutes per trait on 2 CPU cores with smollm2-135m."),
    full: bool = typer.Option(False, "--full", help="The full profile: paper-scale sample sizes (all candidate layers, 64 null-space prompts, 8 reachability prompts; much slower)."),
    seed: int = SeedOpt,
    target_effect: float = typer.Option(0.8, "--target-effect", help="Strength calibration: the Hedges' g the smallest chosen α must reach."),
    max_ppl_ratio: float = typer.Option(2.0, "--max-ppl-ratio", help="Strength calibration: the largest allowed perplexity ratio "
                                        "(steered text under the unsteered model, relative to unsteered text)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout (progress stays on stderr)."),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """The whole audit, from model and trait to a reviewed HTML report (or one audit, as a subcommand).

    Every finished cell is recorded in the run folder's SQLite store; after an interruption
    (Ctrl-C or a kill) the same command resumes.
    """
    if ctx.invoked_subcommand is not None:
        return
    from steerscope import __version__
    from steerscope.audit.pipeline import audit_config, prepare_audit
    from steerscope.runstore import open_run

    if not (trait or dataset) or out_dir is None:
        raise SteerscopeError("steerscope audit needs --trait or --dataset, and --out (or a subcommand: identifiability, nullspace, reachability, side-effects, robustness)")
    if quick and full:
        raise SteerscopeError("choose one of --quick and --full")
    inputs = _audit_inputs(trait, {"dataset": dataset, "prompts": prompts, "name": name, "scorer": scorer, "vector": vector, "layer": layer,
                                   "instructions": instructions})
    config = prepare_audit(audit_config(model, inputs.specs, "full" if full else "quick", seed, target_effect, max_ppl_ratio, dtype, inputs.given))
    store, resumed = open_run(out_dir, config, __version__, " ".join(["steerscope", *sys.argv[1:]]))
    with store:
        if resumed:
            err.print(f"resuming {out_dir}: {store.count()} cells already done", markup=False, soft_wrap=True)
        _run_audit(store, config, inputs, lambda: _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory))
        _finish(store, resumed, as_json)


def _run_audit(store, config: dict, inputs, load: Callable) -> None:
    """Compute every cell with a progress bar (the store logs an interruption and the finish)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from steerscope.audit.pipeline import Auditor, counts_towards_progress, plan_cells

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with store.recording_interruption():
        lm = load()
        with Progress(*columns, console=err) as bar:
            task = bar.add_task("audit", total=plan_cells(config))

            def on_cell(key: str, cached: bool) -> None:
                bar.update(task, advance=int(counts_towards_progress(key)), description=f"{key}{' (stored)' if cached else ''}")

            Auditor(lm, store, config, inputs.specs, scorers=inputs.scorers, on_cell=on_cell, given=inputs.given).run()
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


def _numbers(text: str, kind: type, option: str) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SteerscopeError(f"{option} expects comma-separated {kind.__name__} values, got {text!r}") from None


def _print_written(written) -> None:
    out.print(written.markdown, markup=False, highlight=False)
    out.print(f"wrote {', '.join(str(p) for p in written.files.values())}", markup=False)


@audit_app.command("identifiability")
def audit_identifiability(
    trait: Optional[list[str]] = TraitsOpt, dataset: Optional[Path] = DatasetOpt, prompts: Optional[Path] = PromptsOpt, name: Optional[str] = NameOpt,
    scorer: Optional[str] = ScorerOpt, vector: Optional[Path] = VectorOpt,
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (results.json, summary.md, *.png)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer ℓ (default: 40 % of the depth); with --vector, the file's layer."),
    alpha: Optional[float] = typer.Option(None, "--alpha", "-a", help="Strength α of every steered condition (default 2)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Number of orthogonal draws u ⊥ v (default: the profile's)."),
    env: Optional[str] = typer.Option(None, "--env", help="in_distribution (default), topic_shift or genre_shift."),
    n_prompts: Optional[int] = typer.Option(None, "--n-prompts", help="Evaluation prompts (the prompt is the statistical unit)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Sampled completions per prompt."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n"),
    delta: Optional[float] = typer.Option(None, "--delta", help="Equivalence margin δ, a fraction of v's dose (default 0.1)."),
    class_draws: Optional[int] = typer.Option(None, "--class-draws", help="Monte Carlo draws per norm ratio (class size; 0 skips)."),
    until_conclusive: bool = typer.Option(False, "--until-conclusive", help="Add --n-prompts prompts per look until conclusive."),
    max_prompts: Optional[int] = typer.Option(None, "--max-prompts", help="Prompt budget of --until-conclusive (α spent linearly)."),
    protocol: str = typer.Option("audit", "--protocol", help="audit (default) or paper: the seed paper's own protocol and metrics."),
    seed: int = SeedOpt, quick: bool = typer.Option(False, "--quick", help="The quick profile's sizes (default: the full profile's)."),
    alphas: Optional[str] = typer.Option(None, "--alphas", help="Comma-separated α values: also run the α sweep "
                                          "(v and v+perp at each α; writes alpha_sweep.png)."),
    all_envs: bool = typer.Option(False, "--all-envs", "--envs", help="Also run the behavioural comparison in every "
                                  "environment (writes environments.png, a trait × environment heat map)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Is the vector identifiable? v against v + u (u ⊥ v) on three readouts, or the seed paper's protocol."""
    from steerscope.audit.commands import IdentifiabilityRequest, identifiability_command
    from steerscope.audit.profiles import command_profile, sequential_budget
    from steerscope.audit.sweep import parse_alphas

    inputs = _audit_inputs(trait, {"dataset": dataset, "prompts": prompts, "name": name, "scorer": scorer, "vector": vector, "layer": layer}, True)
    settings = command_profile(quick).identifiability(seed, **_given(n_draws=seeds, n_prompts=n_prompts, samples_per_prompt=samples, delta=delta,
                                                             max_new_tokens=max_new_tokens, env=env, class_draws=class_draws),
                                                      max_prompts=sequential_budget(until_conclusive, max_prompts))
    request = IdentifiabilityRequest(alpha, layer, tuple(parse_alphas(alphas)) if alphas is not None else (), all_envs, overwrite)
    command = identifiability_command(protocol, quick, inputs, out_dir, settings, request)
    command.prepare()
    lm = _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory)
    with err.status(f"auditing {', '.join(command.traits)} at layer {command.chosen_layer(lm)}"):
        _print_written(command.run(lm))


@audit_app.command("nullspace")
def audit_nullspace(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (results.json, summary.md, spectra.png)."),
    layer: list[str] = typer.Option(..., "--layers", "--layer", "-l", help="Layer(s) ℓ; repeat or comma-separate."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Number of built-in prompts (default: the full profile's), "
                                          "or a .txt (one per line) / .jsonl ('prompt') file."),
    positions: str = typer.Option("-1", "--positions", help="Comma-separated token positions where δ is applied (negative: from the end)."),
    tolerances: str = typer.Option("1e-2,1e-3,1e-4", "--tolerances", help="Relative gain tolerances."),
    trait: Optional[str] = typer.Option(None, "--trait", "-t", help="Also report the gain of this built-in trait's mean_diff vector."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Also report the gain of this pair file's mean_diff vector."),
    vector: Optional[Path] = typer.Option(None, "--vector", "-v", help="Also report the gain of this vector file's directions "
                                          "(steerscope, llama.cpp/repeng .gguf, safetensors or .pt tensor dict, .npy)."),
    chunk: int = typer.Option(144, "--chunk", help="Backward passes batched together (memory vs speed)."),
    all_positions: int = typer.Option(0, "--all-positions", help="Also the Jacobian of δ at every position (as the audits "
                                      "steer) on this many prompts; about 20× the cost of one position."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Which residual directions does the output ignore? Exact Jacobian spectra over many prompts."""
    from steerscope.audit.commands import NullspaceCommand
    from steerscope.audit.profiles import command_profile
    from steerscope.data.prompts import prompts_from_spec

    prompt_list = prompts_from_spec(prompts if prompts is not None else str(command_profile(False).ns_prompts))
    specs = tuple(_audit_inputs([trait] if trait else None, {"dataset": dataset}, True).specs)
    command = NullspaceCommand(out_dir, tuple(_layers(layer)), tuple(prompt_list), _numbers(positions, int, "--positions"),
                               _numbers(tolerances, float, "--tolerances"), specs, vector, chunk, overwrite, all_positions)
    command.prepare()
    lm = _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory)
    _print_written(command.run(lm))


@app.command()
def recover(
    method: str = typer.Option(..., "--method", help="ica, sparse, multienv or crosslayer."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (recovery.json, summary.md, vector.safetensors)."),
    layer: int = typer.Option(..., "--layer", "-l", help="Layer ℓ of the direction."),
    trait: Optional[str] = typer.Option(None, "--trait", "-t", help="Built-in trait."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", "-d", help="Your JSONL pair file."),
    env_prompts: Optional[int] = typer.Option(None, "--env-prompts", help="multienv/crosslayer/sparse --observe jacobian: prompts per environment (default: the full profile's)."),
    environments: Optional[Path] = typer.Option(None, "--environments", help="JSONL with 'prompt' and 'env' fields (default: built-in environments)."),
    later: Optional[str] = typer.Option(None, "--later-layers", help="crosslayer: comma-separated later layers (default ℓ + 10 % of the depth)."),
    dictionary: str = typer.Option("neurons", "--dictionary", help="sparse: neurons, learned, or a .npy/.safetensors file of rows."),
    k: int = typer.Option(8, "--k", help="sparse: number of atoms."),
    observe: str = typer.Option("activations", "--observe", help="sparse: activations or jacobian (what is observed of v)."),
    components: Optional[int] = typer.Option(None, "--components", help="ica: number of components."),
    tol: float = typer.Option(1e-3, "--tol", help="Relative gain tolerance of the remaining class dimension."),
    boot: Optional[int] = typer.Option(None, "--boot", help="Bootstrap resamples for stability (default: the full profile's)."),
    seed: int = SeedOpt,
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Recover a trait direction under a structural constraint, with an identifiability report.

    The saved vector is the recovered unit direction (methods recover a direction, not a scale).
    """
    from steerscope.audit.commands import RecoverCommand
    from steerscope.audit.profiles import command_profile
    from steerscope.data.prompts import read_environment_prompts

    sizes = command_profile(False)
    command = RecoverCommand(method, out_dir, layer, trait, dataset, _or(env_prompts, sizes.rec_env_prompts),
                             read_environment_prompts(environments) if environments is not None else None,
                             _numbers(later, int, "--later-layers") if later else (), _or(boot, sizes.rec_boot), seed,
                             {"tol": tol, "n_components": components, "dictionary": dictionary, "k": k, "observe": observe}, overwrite)
    command.prepare()
    lm = _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory)
    with err.status(f"recovering ({method}, {command.boot} bootstrap resamples)"):
        _print_written(command.run(lm))


@bench_app.command("recovery")
def bench_recovery(
    seed: int = SeedOpt,
    boot: int = typer.Option(5, "--boot", help="Bootstrap resamples per case."),
    output: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON here."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Planted ground truth: every recovery method with its assumption holding and broken."""
    from steerscope.fileio import atomic_write, check_output_path
    from steerscope.formatting import ci
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
                      num(r["class_dim"], "d"),
                      ci(stab["mean_cos"], stab["ci_low"], stab["ci_high"], ".3f") if stab else "—", "✔" if r["correct"] else "✘")
    out.print(table)
    if output is not None:
        atomic_write(output, lambda tmp: tmp.write_text(json.dumps(rows, indent=1)), overwrite)
    if not all(r["correct"] for r in rows):
        raise typer.Exit(1)


ReachPositionsOpt = typer.Option("user", "--positions", help="Searched tokens: user (the user's words; default), all, last:N or A:B "
                                 "(token indices of the templated prompt); at most --max-positions of them (the last).")
MaxPositionsOpt = typer.Option(None, "--max-positions", help="At most this many searched positions per prompt (default: the profile's).")
BudgetOpt = typer.Option(None, "--budget", help="Gradient-guided candidates per position (natural and steered states alike).")
MaxCandidatesOpt = typer.Option(None, "--max-candidates", help="Candidates per position in all, fallback scan included (default: the profile's).")
ExhaustiveOpt = typer.Option(False, "--exhaustive", help="Scan the whole vocabulary where the gradient search finds nothing (certified per position).")
RelaxStepsOpt = typer.Option(None, "--relax-steps", help="Adam steps of the continuous relaxation of the steered states (default: the profile's).")
SpanIterationsOpt = typer.Option(None, "--span-iterations", help="Rounds of the whole-span (GCG-style) search of the steered states (default: the profile's).")
BlackBoxOpt = typer.Option(None, "--black-box", help="Prompts for the black-box probes (instruction, few/many-shot, copy, prefill, "
                          "prompt tuning), plus 32 more as demonstrations; 0: none (default: the profile's).")

ReachVectorOpt = typer.Option(None, "--vector", "-v", help="Steering vector: steerscope .safetensors, llama.cpp/repeng .gguf, a "
                              "safetensors or .pt tensor dict, or .npy.")
ReachTraitOpt = typer.Option(None, "--trait", "-t", help="Built-in trait: use its mean_diff vector at --layer (instead of --vector); "
                             "also selects the scorer, the instruction baseline and the black-box probes' prompts.")
ReachLayerOpt = typer.Option(None, "--layer", "-l", help="Steering layer ℓ (default: the vector's only layer, or 40 % of the depth with --trait).")
ReachPromptsOpt = typer.Option(None, "--prompts", help="Text file (one prompt per line) or JSONL with a 'prompt' field (default: the "
                               "trait's evaluation prompts).")


@audit_app.command("reachability")
def audit_reachability(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (results.json, summary.md, *.png)."),
    vector: Optional[Path] = ReachVectorOpt, trait: Optional[str] = ReachTraitOpt, dataset: Optional[Path] = DatasetOpt,
    name: Optional[str] = NameOpt, scorer: Optional[str] = ScorerOpt, instructions: Optional[list[str]] = InstructionsOpt,
    alpha: float = typer.Option(..., "--alpha", "-a", help="Strength α in a' = a + α·v."),
    layer: Optional[int] = ReachLayerOpt, capture_layer: Optional[int] = typer.Option(None, "--capture-layer", help="Layer whose states are compared (default: ℓ)."),
    prompts_file: Optional[Path] = ReachPromptsOpt, n_prompts: Optional[int] = typer.Option(None, "--n-prompts", help="Number of prompts audited (default: the profile's)."),
    positions: str = ReachPositionsOpt, max_positions: Optional[int] = MaxPositionsOpt,
    alphas: Optional[str] = typer.Option(None, "--alphas", help="Comma-separated α values of the sweep (default: the profile's)."),
    sweep_prompts: Optional[int] = typer.Option(None, "--sweep-prompts", help="Prompts used by the sweep, random control and behaviour."),
    budget: Optional[int] = BudgetOpt, max_candidates: Optional[int] = MaxCandidatesOpt, exhaustive: bool = ExhaustiveOpt,
    relax_steps: Optional[int] = RelaxStepsOpt, span_iterations: Optional[int] = SpanIterationsOpt, black_box: Optional[int] = BlackBoxOpt,
    exhaustive_next: bool = typer.Option(False, "--exhaustive-next", help="Search the whole vocabulary at i+1 in the adversarial construction."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n"), overwrite: bool = typer.Option(False, "--overwrite"),
    seed: int = SeedOpt, quick: bool = typer.Option(False, "--quick", help="The quick profile's sizes (default: the full profile's)."),
    allow_model_mismatch: bool = typer.Option(False, "--allow-model-mismatch", help="Use a vector made for another model of the same d_model."),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Is the steered state reachable by a prompt? Invert natural and steered states and compare (a failed search is an upper bound, not a proof)."""
    from steerscope.audit.commands import ReachabilityCommand
    from steerscope.audit.profiles import command_profile
    from steerscope.audit.sweep import parse_alphas
    from steerscope.data.prompts import read_prompts
    sizes = command_profile(quick)
    settings = sizes.reachability(seed, budget, max_candidates, exhaustive, relax_steps, span_iterations, black_box,
                                  adversarial_exhaustive=exhaustive_next, positions=positions, **_given(
        max_positions=max_positions, sweep_prompts=sweep_prompts, max_new_tokens=max_new_tokens, alphas=tuple(parse_alphas(alphas)) if alphas is not None else None))
    inputs = _audit_inputs([trait] if trait else None, {"dataset": dataset, "name": name, "scorer": scorer, "instructions": instructions}, True)
    command = ReachabilityCommand(out_dir, alpha, settings, _or(n_prompts, sizes.reach_prompts), vector, inputs, layer, capture_layer,
                                  tuple(read_prompts(prompts_file)) if prompts_file is not None else None, allow_model_mismatch, overwrite)
    command.prepare()
    lm = _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory)
    with err.status(f"inverting {command.n_prompts} prompts × up to {settings.max_positions} positions"):
        _print_written(command.run(lm))


def _effect_command(kind: str, trait, user: dict[str, Any], out_dir: Path, alpha: float, quick: bool, seed: int, overwrite: bool):
    """A side-effect or robustness command, prepared (inputs checked before the model loads)."""
    from steerscope.audit.effect_commands import RobustnessCommand, SideEffectsCommand
    from steerscope.audit.profiles import command_profile

    cls = SideEffectsCommand if kind == "side-effects" else RobustnessCommand
    command = cls(_audit_inputs(trait, user, True), out_dir, command_profile(quick), alpha, user.get("layer"), seed, overwrite)
    command.prepare()
    return command


EffectAlphaOpt = typer.Option(..., "--alpha", "-a", help="Strength α in a' = a + α·v (the audit's calibrated α, or your own).")


@audit_app.command("side-effects")
def audit_side_effects(
    trait: Optional[list[str]] = TraitsOpt, dataset: Optional[Path] = DatasetOpt, prompts: Optional[Path] = PromptsOpt, name: Optional[str] = NameOpt,
    scorer: Optional[str] = ScorerOpt, vector: Optional[Path] = VectorOpt,
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (side_effects.json, summary.md, side_effects.png)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer ℓ (default: 40 % of the depth); with --vector, the file's layer."),
    alpha: float = EffectAlphaOpt, seed: int = SeedOpt,
    quick: bool = typer.Option(False, "--quick", help="The quick profile's sizes (default: the full profile's)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """What else does it change? Off-target matrix, fluency, drift, capability, dose curve, add / clamp / ablate."""
    user = {"dataset": dataset, "prompts": prompts, "name": name, "scorer": scorer, "vector": vector, "layer": layer}
    command = _effect_command("side-effects", trait, user, out_dir, alpha, quick, seed, overwrite)
    lm = _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory)
    with err.status(f"side effects of {command.spec.name}"):
        _print_written(command.run(lm))


@audit_app.command("robustness")
def audit_robustness(
    trait: Optional[list[str]] = TraitsOpt, dataset: Optional[Path] = DatasetOpt, prompts: Optional[Path] = PromptsOpt, name: Optional[str] = NameOpt,
    scorer: Optional[str] = ScorerOpt, vector: Optional[Path] = VectorOpt,
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (robustness.json, summary.md, robustness.png)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer ℓ (default: 40 % of the depth); with --vector, the file's layer."),
    alpha: float = EffectAlphaOpt, seed: int = SeedOpt, instructions: Optional[list[str]] = InstructionsOpt,
    quick: bool = typer.Option(False, "--quick", help="The quick profile's sizes (default: the full profile's)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Does it hold up? Opposing and supporting instructions, environments, paraphrases, layer profile, stability of the vector."""
    user = {"dataset": dataset, "prompts": prompts, "name": name, "scorer": scorer, "vector": vector, "layer": layer,
            "instructions": instructions}
    command = _effect_command("robustness", trait, user, out_dir, alpha, quick, seed, overwrite)
    lm = _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory)
    with err.status(f"robustness of {command.spec.name}"):
        _print_written(command.run(lm))


@app.command()
def monitor(
    trait: Optional[list[str]] = TraitsOpt, dataset: Optional[Path] = DatasetOpt, prompts: Optional[Path] = PromptsOpt, name: Optional[str] = NameOpt,
    scorer: Optional[str] = ScorerOpt, vector: Optional[Path] = VectorOpt,
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder (monitor.json, summary.md, monitor.html)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer ℓ (default: 40 % of the depth); with --vector, the file's layer."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="Also show the per-token projections of these texts (text, or JSONL with 'prompt')."),
    alpha: float = typer.Option(2.0, "--alpha", "-a", help="Strength of the ±α·v completions whose detection is measured."),
    n_prompts: int = typer.Option(12, "--n-prompts", help="Prompts generated from (the trait's in-distribution prompts)."),
    samples: int = typer.Option(2, "--samples", help="Sampled completions per prompt and condition."),
    max_new_tokens: int = typer.Option(24, "--max-new-tokens", "-n"), seed: int = SeedOpt,
    overwrite: bool = typer.Option(False, "--overwrite"),
    model: str = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt, device_map: Optional[str] = DeviceMapOpt,
    cache_dir: Optional[Path] = CacheOpt, layers_path: Optional[str] = LayersPathOpt, max_memory: Optional[str] = MaxMemoryOpt,
) -> None:
    """Monitor with a steering direction: detection on held-out pairs and steered completions, tracking, drift, per-token view."""
    from steerscope.audit.commands import MonitorCommand
    from steerscope.data.prompts import read_prompts
    from steerscope.monitor import MonitorSettings

    inputs = _audit_inputs(trait, {"dataset": dataset, "prompts": prompts, "name": name, "scorer": scorer, "vector": vector, "layer": layer}, True)
    settings = MonitorSettings(alpha, n_prompts, samples, max_new_tokens, seed=seed)
    command = MonitorCommand(inputs, out_dir, settings, layer, tuple(read_prompts(texts)) if texts is not None else (), overwrite)
    command.prepare()
    lm = _load(model, device, dtype, cache_dir, layers_path, device_map, max_memory)
    with err.status(f"monitoring {command.inputs.specs[0].name}"):
        _print_written(command.run(lm))


PlanArg = typer.Argument(..., help="Sweep plan (TOML): models, traits or datasets tables, layers, profiles, seeds and a sizes "
                         "table; see docs/scaling.md.")
SweepOutOpt = typer.Option(..., "--out", "-o", help="Sweep folder: the sweep store (run.sqlite), one run folder per audit "
                           "(audits/NAME), and sweep.md, sweep.json, sweep.png. Run the same command again to resume.")
RayOpt = typer.Option(False, "--ray", help="Run the audits on Ray actors, on a Ray cluster started on this machine for the sweep "
                      "(pip install 'steerscope[ray]').")
RayAddressOpt = typer.Option(None, "--ray-address", help="Join this Ray cluster instead (HOST:PORT, ray://HOST:PORT, or auto for "
                             "the one running on this machine); implies --ray.")
WorkersOpt = typer.Option(None, "--workers", min=1, help="With Ray: actors per model, each holding the model (default: as many as "
                          "the cluster's CPUs allow, or its GPUs with --gpus-per-worker).")
GpusPerWorkerOpt = typer.Option(0.0, "--gpus-per-worker", min=0.0, help="With Ray: GPUs each actor reserves (1, or 0.5 to share one).")


@app.command()
def sweep(
    plan: Path = PlanArg, out_dir: Path = SweepOutOpt, ray: bool = RayOpt, ray_address: Optional[str] = RayAddressOpt,
    workers: Optional[int] = WorkersOpt, gpus_per_worker: float = GpusPerWorkerOpt,
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary on stdout (progress stays on stderr)."),
) -> None:
    """A grid of audits (models × traits × layers × profiles × seeds) from a plan, and a report comparing them.

    Each audit is a run folder of its own; after an interruption (Ctrl-C or a kill) the same command resumes.
    """
    from transformers.utils import logging as hf_logging

    from steerscope.distributed import ray_backend
    from steerscope.sweep import SweepSettings, run_sweep
    from steerscope.sweep_plan import read_plan

    hf_logging.disable_progress_bar()
    settings = SweepSettings(ray_backend(ray, ray_address, workers, gpus_per_worker), command=" ".join(["steerscope", *sys.argv[1:]]),
                             on_event=lambda audit, what: err.print(f"{audit}: {what}", markup=False, highlight=False, soft_wrap=True))
    written = run_sweep(read_plan(plan), out_dir, settings)
    results = json.loads(written["results"].read_text())
    if as_json:
        return print(json.dumps({"sweep": str(out_dir), "audits": results["audits"], "files": {k: str(v) for k, v in written.items()}}, indent=2))
    for entry in results["audits"]:
        answers = ", ".join(f"{k}: {v}" for k, v in entry["answers"].items())
        out.print(f"{entry['name']} (layer {entry['audited_layer']}): {answers}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"report: {written['markdown']}", markup=False)


def _fail(message: str, status: int = 2) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(status)


#: click's base exception (bad option values, unknown options, missing arguments), whichever click typer
#: uses: typer >= 0.2x vendors its own as ``typer._click``.
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage(exc: Any) -> str:
    """A click error (a bad option value, an unknown option, a missing argument) as one line."""
    ctx = getattr(exc, "ctx", None)
    return " ".join(exc.format_message().split()) + (f" (see '{ctx.command_path} --help')" if ctx is not None else "")


def main() -> None:
    """The ``steerscope`` command: bad input of any kind, option values included, ends in one ``error:`` line and exit status 2."""
    try:
        status = app(standalone_mode=False)
    except _CLICK_ERROR as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help has been printed
            sys.exit(2)
        _fail(_usage(exc), getattr(exc, "exit_code", 2))
    except typer.Abort:
        _fail("aborted", 1)
    except SteerscopeError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)
