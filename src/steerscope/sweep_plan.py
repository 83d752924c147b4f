"""The plan of a sweep: a TOML file naming a grid of audits, read, checked and expanded.

A plan (every key but one of ``traits``/``datasets`` is optional)::

    models = ["smollm2-135m", "models/my-model"]      # built-in name, Hugging Face id or folder, .gguf file
    traits = ["formality", "sentiment"]               # built-in traits
    layers = [8, 12, "auto"]                          # fixed layers; "auto": the audit selects one (default)
    profiles = ["quick"]                              # quick (default) or full
    seeds = [0, 1]                                    # default [0]
    dtype = "float32"                                 # default float32
    device = "auto"                                   # where each worker loads its model: auto, cpu, cuda, cuda:N
    target_effect = 0.8                               # strength calibration, as `steerscope audit`
    max_ppl_ratio = 2.0

    [[datasets]]                                      # a trait of your own (repeat the table for more)
    pairs = "data/pirate.jsonl"                       # paths are relative to the plan's folder
    prompts = "data/pirate_prompts.jsonl"             # optional, as --prompts
    name = "pirate"                                   # optional, as --name
    scorer = "judge:written in pirate speech"         # optional, as --scorer (default: none)
    instructions = ["Talk like a pirate.", "Talk plainly."]

    [sizes]                                           # sizes that replace the profiles' (e.g. a smaller grid)
    id_draws = 2

The grid is every model × trait × layer × profile × seed, one audit of one trait each, in that
order (models outermost, so that a model is loaded once for all its audits). An error names the
plan's line and field.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from steerscope.errors import DataError, SteerscopeError, shown
from steerscope.traitspec import TraitSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PLAN_KEYS = ("models", "traits", "datasets", "layers", "profiles", "seeds", "dtype", "device", "target_effect", "max_ppl_ratio", "sizes")
DATASET_KEYS = ("pairs", "prompts", "name", "scorer", "instructions")
#: The layer entry that leaves the choice to the audit's layer selection.
AUTO = "auto"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_KEY_LINE = re.compile(r"\s*(?:\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+))\s*=")
_TABLE_LINE = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")


@dataclass(frozen=True)
class AuditJob:
    """One audit of a sweep: ``name`` (its folder under ``audits/``), the model as loaded, the trait,
    the fixed layer (None: selected by the audit), the profile, the seed and the run configuration."""

    name: str
    model: str
    spec: TraitSpec
    layer: int | None
    profile: str
    seed: int
    config: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class SweepPlan:
    """A checked plan (see the module docstring); ``source``: the plan file."""

    models: tuple[str, ...]
    specs: tuple[TraitSpec, ...]
    layers: tuple[int | None, ...] = (None,)
    profiles: tuple[str, ...] = ("quick",)
    seeds: tuple[int, ...] = (0,)
    sizes: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    device: str = "auto"
    target_g: float = 0.8
    max_ppl_ratio: float = 2.0
    source: str = "<plan>"

    def audits(self) -> list[AuditJob]:
        """Every grid point as an :class:`AuditJob`, models outermost; SteerscopeError for a point the
        audit would refuse (e.g. too few prompts for the profile) or two models with one folder name."""
        slugs = [model_slug(m) for m in self.models]
        for i, slug in enumerate(slugs):
            if slugs.index(slug) != i:
                raise SteerscopeError(f"{self.source}: models[{slugs.index(slug)}] and models[{i}] would share the folder name {slug!r}; "
                                      "audit them in separate sweeps")
        grid = product(zip(self.models, slugs), self.specs, self.layers, self.profiles, self.seeds)
        return [self._job(model, slug, spec, layer, profile, seed) for (model, slug), spec, layer, profile, seed in grid]

    def _job(self, model: str, slug: str, spec: TraitSpec, layer: int | None, profile: str, seed: int) -> AuditJob:
        from steerscope.audit.pipeline import audit_config

        try:
            config = audit_config(model, [spec], profile, seed, self.target_g, self.max_ppl_ratio, self.dtype, sizes=self.sizes, layer=layer)
        except SteerscopeError as exc:
            raise SteerscopeError(f"{self.source}: {exc}") from None
        name = f"{slug}.{spec.name}.{AUTO if layer is None else f'L{layer}'}.{profile}.s{seed}"
        return AuditJob(name, model, spec, layer, profile, seed, config)

    def config(self) -> dict[str, Any]:
        """The sweep store's configuration: what must match for a resume (the audits' own configurations
        are checked by their stores)."""
        jobs = self.audits()
        return json.loads(json.dumps({
            "kind": "sweep", "models": list(self.models), "traits": {s.name: s.summary() for s in self.specs},
            "layers": [AUTO if x is None else x for x in self.layers], "profiles": list(self.profiles), "seeds": list(self.seeds),
            "sizes": dict(self.sizes), "dtype": self.dtype, "target_g": self.target_g, "max_ppl_ratio": self.max_ppl_ratio,
            "audits": [job.name for job in jobs]}))


def model_slug(model: str) -> str:
    """A folder-name form of a model: a built-in name as is, a path's last part, an id's ``/`` as ``_``."""
    path = Path(model)
    text = path.name if path.is_absolute() else model.replace("/", "_")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip("._-") or "model"


def read_plan(path: str | Path) -> SweepPlan:
    """The plan in the TOML file ``path``, checked; SteerscopeError naming the line and field that is wrong."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SteerscopeError(f"plan file {file} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SteerscopeError(f"plan file {file} cannot be read ({exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SteerscopeError(f"{file}: not valid TOML: {exc}") from None
    return _PlanReader(file, text).plan(data)


class _PlanReader:
    """Checks each field of a parsed plan; errors say ``FILE, line N: FIELD: problem``."""

    def __init__(self, file: Path, text: str):
        self.file, self.lines = file, text.split("\n")

    def fail(self, problem: str, key: str, table: str = "", index: int = 0, item: int | None = None) -> SteerscopeError:
        where = f"{table}[{index}].{key}" if table == "datasets" else f"{table}.{key}" if table else key
        line = self.line(key, table, index)
        place = f"{self.file}, line {line}" if line else str(self.file)
        return SteerscopeError(f"{place}: {where}{'' if item is None else f'[{item}]'}: {problem}")

    def line(self, key: str, table: str = "", index: int = 0) -> int | None:
        """The line that sets ``key`` in ``table`` (the ``index``-th of an array of tables), else the line
        of the table's header; None when neither is found."""
        current, seen, header_line = "", -1, None
        for number, text in enumerate(self.lines, 1):
            header = _TABLE_LINE.match(text)
            if header and not _KEY_LINE.match(text):
                current = header.group(2)
                seen += current == table
                if current == table and seen == (index if table == "datasets" else 0):
                    header_line = number
                continue
            found = _KEY_LINE.match(text)
            if found and current == table and (table != "datasets" or seen == index) and key in found.groups():
                return number
        return header_line

    def plan(self, data: Mapping[str, Any]) -> SweepPlan:
        for key in data:
            if key not in PLAN_KEYS:
                raise self.fail(f"unknown key; a plan has {', '.join(PLAN_KEYS)}", key)
        specs = self.traits(data) + self.datasets(data)
        names = [s.name for s in specs]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise self.fail(f"trait {name!r} is given twice; name a dataset apart with name = \"…\"",
                                "traits" if i < len(data.get("traits", [])) else "datasets")
        return SweepPlan(self.models(data), tuple(specs), self.layers(data), self.profiles(data), self.seeds(data), self.sizes(data),
                         self.choice(data, "dtype", "float32", ("float32", "float64", "bfloat16", "float16")), self.device(data),
                         self.number(data, "target_effect", 0.8, 0.0, strict=True), self.number(data, "max_ppl_ratio", 2.0, 1.0),
                         str(self.file))

    def values(self, data: Mapping[str, Any], key: str, default: Sequence[Any], kinds: tuple[type, ...], what: str) -> list[Any]:
        """A non-empty list of distinct values of ``kinds``; ``default`` when the key is absent."""
        if key not in data:
            return list(default)
        values = data[key]
        if not isinstance(values, list) or not values:
            raise self.fail(f"expected a non-empty list of {what}, got {shown(values)}", key)
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise self.fail(f"expected {what}, got {shown(value)}", key, item=i)
            if values.index(value) != i:
                raise self.fail(f"{shown(value)} is given twice", key, item=i)
        return values

    def models(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        values = self.values(data, "models", ["smollm2-135m"], (str,), "model names or paths")
        return tuple(self.model(value, i) for i, value in enumerate(values))

    def model(self, name: str, i: int) -> str:
        """A built-in name or hub id as is; a path (relative to the plan's folder) made absolute."""
        from steerscope.models.builtin import BUILTIN_MODELS

        if name in BUILTIN_MODELS:
            return name
        path = (self.file.parent / Path(name).expanduser()).resolve()
        if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
            return str(path)
        if name.startswith((".", "/", "~")) or path.exists() or "/" not in name:
            raise self.fail(f"no built-in model, model folder or .gguf file {name!r} (paths are relative to the plan's folder); "
                            f"built-in models: {', '.join(BUILTIN_MODELS)}", "models", item=i)
        return name  # a Hugging Face hub id

    def traits(self, data: Mapping[str, Any]) -> list[TraitSpec]:
        from steerscope.data.traits import TRAITS
        from steerscope.traitspec import builtin_spec

        names = self.values(data, "traits", [], (str,), "built-in trait names")
        for i, name in enumerate(names):
            if name not in TRAITS:
                raise self.fail(f"unknown trait {name!r}; built-in traits: {', '.join(TRAITS)} (a trait of your own goes in [[datasets]])",
                                "traits", item=i)
        if not names and "datasets" not in data:
            raise self.fail("a plan needs traits = [...] or at least one [[datasets]] table", "traits")
        return [builtin_spec(name) for name in names]

    def datasets(self, data: Mapping[str, Any]) -> list[TraitSpec]:
        if "datasets" not in data:
            return []
        tables = data["datasets"]
        if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
            raise self.fail("expected one or more [[datasets]] tables", "datasets")
        return [self.dataset(table, i) for i, table in enumerate(tables)]

    def dataset(self, table: Mapping[str, Any], i: int) -> TraitSpec:
        from steerscope.score.base import check_scorer_spec
        from steerscope.traitspec import spec_from_files

        for key, value in table.items():
            if key not in DATASET_KEYS:
                raise self.fail(f"unknown key; a dataset has {', '.join(DATASET_KEYS)}", key, "datasets", i)
            if key != "instructions" and not (isinstance(value, str) and value.strip()):
                raise self.fail(f"expected a non-empty string, got {shown(value)}", key, "datasets", i)
        if "pairs" not in table:
            raise self.fail("a dataset needs its pair file: pairs = \"FILE.jsonl\"", "pairs", "datasets", i)
        instructions = table.get("instructions")
        if instructions is not None and not (isinstance(instructions, list) and len(instructions) == 2
                                             and all(isinstance(x, str) and x.strip() for x in instructions)):
            raise self.fail(f"expected two instructions, the positive pole's then the negative pole's, got {shown(instructions)}",
                            "instructions", "datasets", i)
        scorer = table.get("scorer")
        if scorer is not None:
            try:
                check_scorer_spec(scorer)
            except SteerscopeError as exc:
                raise self.fail(str(exc), "scorer", "datasets", i) from None
        pairs = self.file.parent / table["pairs"]
        prompts = self.file.parent / table["prompts"] if "prompts" in table else None
        try:
            return spec_from_files(pairs, prompts, table.get("name"), None if scorer in (None, "none") else scorer,
                                   (instructions[0], instructions[1]) if instructions else None)
        except DataError as exc:
            raise self.fail(str(exc), "pairs" if Path(exc.path) == pairs else "prompts", "datasets", i) from None
        except SteerscopeError as exc:
            key = "name" if str(exc).startswith("trait name") else "prompts" if prompts and str(prompts) in str(exc) else "pairs"
            raise self.fail(str(exc), key, "datasets", i) from None

    def layers(self, data: Mapping[str, Any]) -> tuple[int | None, ...]:
        values = self.values(data, "layers", [AUTO], (int, str), f"layer numbers or {AUTO!r}")
        for i, value in enumerate(values):
            if value != AUTO and not (isinstance(value, int) and value >= 0):
                raise self.fail(f"expected a layer number >= 0 or {AUTO!r}, got {shown(value)}", "layers", item=i)
        return tuple(None if value == AUTO else value for value in values)

    def profiles(self, data: Mapping[str, Any]) -> tuple[str, ...]:
        from steerscope.audit.profiles import PROFILE_NAMES

        values = self.values(data, "profiles", ["quick"], (str,), "profile names")
        for i, value in enumerate(values):
            if value not in PROFILE_NAMES:
                raise self.fail(f"unknown profile {value!r}; use {' or '.join(PROFILE_NAMES)}", "profiles", item=i)
        return tuple(values)

    def seeds(self, data: Mapping[str, Any]) -> tuple[int, ...]:
        values = self.values(data, "seeds", [0], (int,), "whole numbers")
        for i, value in enumerate(values):
            if not 0 <= value < 2**32:
                raise self.fail(f"a seed is 0 to 2**32 - 1, got {value}", "seeds", item=i)
        return tuple(values)

    def sizes(self, data: Mapping[str, Any]) -> dict[str, Any]:
        from steerscope.audit.profiles import override_sizes, profile

        sizes = data.get("sizes", {})
        if not isinstance(sizes, dict):
            raise self.fail("expected a [sizes] table", "sizes")
        settings = profile("quick").settings()
        for key, value in sizes.items():
            try:
                override_sizes(settings, {key: value})
            except SteerscopeError as exc:
                raise self.fail(str(exc), key, "sizes") from None
        return dict(sizes)

    def choice(self, data: Mapping[str, Any], key: str, default: str, allowed: Sequence[str]) -> str:
        value = data.get(key, default)
        if value not in allowed:
            raise self.fail(f"expected one of {', '.join(allowed)}, got {shown(value)}", key)
        return value

    def device(self, data: Mapping[str, Any]) -> str:
        value = data.get("device", "auto")
        if not isinstance(value, str) or not _DEVICE.fullmatch(value):
            raise self.fail(f"expected auto, cpu, cuda or cuda:N, got {shown(value)}", "device")
        return value

    def number(self, data: Mapping[str, Any], key: str, default: float, low: float, strict: bool = False) -> float:
        value = data.get(key, default)
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not (value > low if strict else value >= low)):
            raise self.fail(f"expected a finite number {'>' if strict else '>='} {low:g}, got {shown(value)}", key)
        return float(value)
