"""Use a causal LM (any steerscope LoadedModel) as a yes/no judge of a trait."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from steerscope.encoding import encode_prompt, has_chat_template, pad_batch
from steerscope.errors import SteerscopeError
from steerscope.models.loading import LoadedModel
from steerscope.score.base import TRAIT_DESCRIPTIONS, Scorer, check_texts, check_trait, register_scorer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_QUESTION = (
    "Is the following text {description}? Answer with a single word, Yes or No.\n\n"
    "Text: \"{text}\""
)


def answer_token_id(tokenizer: PreTrainedTokenizerBase, word: str, prefer_space: bool = False) -> int:
    """The id of a single token spelling ``word`` (e.g. ``"Yes"``).

    Variants tried in order: ``word``, ``" word"``, lower-case and capitalised forms (the
    leading-space forms first when ``prefer_space``); the first that encodes to exactly one token
    wins.
    """
    forms = [word, word.lower(), word.capitalize(), word.upper()]
    forms = list(dict.fromkeys(forms))
    spaced = [" " + f for f in forms]
    variants = (spaced + forms) if prefer_space else [x for pair in zip(forms, spaced) for x in pair]
    for variant in variants:
        ids = list(tokenizer(variant, add_special_tokens=False)["input_ids"])
        unk = getattr(tokenizer, "unk_token_id", None)
        if len(ids) == 1 and ids[0] != unk:
            return ids[0]
    raise SteerscopeError(f"the judge's tokenizer has no single token for {word!r} (tried {variants})")


class LMJudgeScorer:
    """Score = log p(Yes) − log p(No) for the next token after a yes/no question about the text.

    The question (``question``: a format string with ``{text}`` and optionally ``{description}``;
    default :data:`DEFAULT_QUESTION` with the trait's description) is sent as a user message through
    the model's chat template when it has one (:func:`steerscope.encoding.encode_prompt`,
    ``chat="auto"``), else as plain text. Texts are scored in left-padded batches. Any steering
    active on ``lm`` applies to the judge too. ``validity`` is None (not measured).
    """

    def __init__(self, lm: LoadedModel, trait: str, question: str | None = None, batch_size: int = 8) -> None:
        if question is None and trait not in TRAIT_DESCRIPTIONS:
            raise SteerscopeError(
                f"no built-in judge question for trait {trait!r} (known: {', '.join(TRAIT_DESCRIPTIONS)}); "
                "pass question='... {text} ...'"
            )
        template = question if question is not None else DEFAULT_QUESTION
        if "{text}" not in template:
            raise SteerscopeError("the judge question must contain the placeholder {text}")
        if batch_size < 1:
            raise SteerscopeError("batch_size must be at least 1")
        self.lm = lm
        self.trait = trait
        self.question = template
        self.batch_size = batch_size
        self.name = f"judge:{lm.name}"
        self.validity: dict | None = None
        prefer_space = not has_chat_template(lm.tokenizer)  # plain layout ends with "Assistant:"
        self.yes_id = answer_token_id(lm.tokenizer, "Yes", prefer_space)
        self.no_id = answer_token_id(lm.tokenizer, "No", prefer_space)
        if self.yes_id == self.no_id:
            raise SteerscopeError("the judge's Yes and No answers map to the same token")

    def prompt(self, text: str) -> str:
        return self.question.format(text=text, description=TRAIT_DESCRIPTIONS.get(self.trait, self.trait))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        from steerscope.likelihood import logits_tail

        items = check_texts(texts)
        out = np.zeros(len(items), dtype=np.float64)
        if not items:
            return out
        encoded = [encode_prompt(self.lm.tokenizer, self.prompt(t), chat="auto") for t in items]
        order = sorted(range(len(items)), key=lambda i: len(encoded[i]))
        pad_id = self.lm.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                batch = pad_batch([encoded[i] for i in chunk], pad_id, "left")
                logits = logits_tail(self.lm, batch, 1)[:, -1, :].float()  # [B, V]: one position, not [B, T, V]
                logp = torch.log_softmax(logits, dim=-1)
                margin = (logp[:, self.yes_id] - logp[:, self.no_id]).double().cpu().numpy()
                out[chunk] = margin
        return out

    def __repr__(self) -> str:
        return f"LMJudgeScorer({self.lm.name!r}, {self.trait!r})"


@register_scorer("judge")
def judge_scorer(trait: str, **kwargs) -> Scorer:
    """:class:`LMJudgeScorer` of a built-in trait; needs ``lm=``."""
    check_trait(trait)
    if "lm" not in kwargs:
        raise SteerscopeError("the judge scorer needs a model: get_scorer(trait, 'judge', lm=load_model(...))")
    return LMJudgeScorer(trait=trait, **kwargs)
