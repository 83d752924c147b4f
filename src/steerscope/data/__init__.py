"""Contrastive data: the JSONL pair format and the built-in trait datasets."""

from steerscope.data.traits import ENVIRONMENTS, TRAITS, builtin_pairs, builtin_prompts, dataset_summary, load_pairs
from steerscope.data.pairs import ContrastivePair, dataset_hash, read_pairs_file

__all__ = [
    "ENVIRONMENTS", "TRAITS", "ContrastivePair", "builtin_pairs", "builtin_prompts", "dataset_hash",
    "dataset_summary", "load_pairs", "read_pairs_file",
]
