"""Wrap any Hugging Face sequence-classification model as a scorer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from steerscope.errors import SteerscopeError
from steerscope.score.base import Scorer, check_texts, register_scorer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _labels(config: object, n_labels: int) -> dict[int, str]:
    raw = getattr(config, "id2label", None) or {}
    labels = {int(k): str(v) for k, v in dict(raw).items()}
    return labels or {i: f"LABEL_{i}" for i in range(n_labels)}


def resolve_label(config: object, label: int | str, n_labels: int) -> int:
    """Index of ``label`` (a name in ``config.id2label``, or an index) among the model's outputs."""
    labels = _labels(config, n_labels)
    shown = ", ".join(f"{i}={name!r}" for i, name in sorted(labels.items()))
    if isinstance(label, bool):
        raise SteerscopeError(f"positive_label must be a label name or index, not {label!r}")
    if isinstance(label, (int, np.integer)):
        if 0 <= int(label) < n_labels:
            return int(label)
        raise SteerscopeError(f"label index {label} is out of range: the model's labels are {shown}")
    matches = [i for i, name in labels.items() if name == label]
    if not matches:
        matches = [i for i, name in labels.items() if name.lower() == str(label).lower()]
    if len(matches) == 1 and matches[0] < n_labels:
        return matches[0]
    raise SteerscopeError(f"unknown label {label!r}: the model's labels are {shown}")


class HFClassifierScorer:
    """Log-odds of ``positive_label``: ``logit[pos] − logsumexp(other logits)``.

    For a single-logit model (``num_labels == 1``) the logit itself is the score. Texts are
    tokenized with padding and truncation (``max_length``) in batches of ``batch_size``.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, positive_label: int | str,
                 trait: str = "custom", name: str | None = None, batch_size: int = 32, max_length: int = 512) -> None:
        config = getattr(model, "config", None)
        n_labels = int(getattr(config, "num_labels", 0) or len(_labels(config, 0)))
        if n_labels < 1:
            raise SteerscopeError("the classifier model reports no labels (config.num_labels)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.n_labels = n_labels
        self.positive_index = 0 if n_labels == 1 else resolve_label(config, positive_label, n_labels)
        self.positive_label = _labels(config, n_labels).get(self.positive_index, str(positive_label))
        self.trait = trait
        self.name = name or f"classifier:{getattr(config, '_name_or_path', '') or type(model).__name__}"
        self.batch_size = batch_size
        self.max_length = max_length
        self.validity: dict | None = None
        if getattr(tokenizer, "pad_token_id", None) is None and getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = getattr(tokenizer, "pad_token_id", None)

    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw classifier logits ``[N, num_labels]`` (float32, CPU)."""
        items = check_texts(texts)
        device = next(self.model.parameters()).device
        rows = []
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                enc = self.tokenizer(
                    items[start:start + self.batch_size], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                )
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                rows.append(self.model(**enc).logits.float().cpu())
        return torch.cat(rows) if rows else torch.zeros((0, self.n_labels))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        logits = self.logits(texts).double()
        if logits.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        if self.n_labels == 1:
            return logits[:, 0].numpy()
        pos = logits[:, self.positive_index]
        others = torch.cat([logits[:, :self.positive_index], logits[:, self.positive_index + 1:]], dim=1)
        return (pos - torch.logsumexp(others, dim=1)).numpy()

    def __repr__(self) -> str:
        return f"HFClassifierScorer({self.name!r}, positive_label={self.positive_label!r})"


def from_pretrained(path_or_id: str, positive_label: int | str, trust_remote_code: bool = False, trait: str = "custom",
                    device: str = "auto", **kwargs) -> HFClassifierScorer:
    """Load ``AutoModelForSequenceClassification`` + tokenizer from a folder or hub id (set
    ``HF_HUB_OFFLINE=1`` to stay offline) and wrap it. ``kwargs`` go to :class:`HFClassifierScorer`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from steerscope.models.loading import resolve_device

    try:
        architectures = AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code).architectures or []
    except (OSError, ValueError) as exc:
        raise SteerscopeError(f"could not load classifier {path_or_id!r}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise SteerscopeError(f"{path_or_id!r} is not a sequence-classification model (architectures: {', '.join(architectures) or 'none'}); "
                              "loading it as one would score with an untrained head")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise SteerscopeError(
            f"could not load classifier {path_or_id!r}: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None
    model.to(resolve_device(device))
    return HFClassifierScorer(model, tokenizer, positive_label, trait=trait, name=f"classifier:{path_or_id}", **kwargs)


@register_scorer("classifier")
def classifier_scorer(trait: str, **kwargs) -> Scorer:
    """:func:`from_pretrained` for any trait; needs ``path_or_id=`` and ``positive_label=``."""
    if "path_or_id" not in kwargs or "positive_label" not in kwargs:
        raise SteerscopeError(
            "the classifier scorer needs path_or_id= (a model folder or hub id) and positive_label="
        )
    return from_pretrained(trait=trait, **kwargs)
