"""Tiny random causal LMs built in code (no downloads), for tests and examples.

``tiny_model(arch)`` (``arch`` in :data:`ARCHITECTURES`: Llama, Mistral, Qwen2/3, Phi-3, Gemma 1–3,
Phi, GPT-2, GPT-NeoX) returns a LoadedModel with a
word-level tokenizer over a small English vocabulary and a simple chat template.
"""

from __future__ import annotations

from typing import Any

import torch

from steerscope.models.loading import LoadedModel, wrap_model

_WORDS = """
the a an and or but if then so to of in on at by for with from about as is are was were be been
i you he she it we they me him her us them my your his its our their this that these those
what who how why when where which can could would should will shall may might must do does did
have has had not no yes please thank thanks hello hi good bad great terrible happy sad nice kind
rude formal casual tell me weekend day week time work home food travel weather movie book music
friend family people person dog cat water fire sun moon city country world school teacher student
write story poem email letter short long very really quite just like love hate think know want
need help make go come see look say get give take use find feel try ask answer question one two
three first last new old big small more most less best worst true false fact wrong right
""".split()
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
PUNCT = list(".,!?;:'\"-()")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer(chat_template: bool = True):
    """A fast word-level tokenizer (vocabulary of ~250 words, BOS ``<s>``, EOS ``</s>``)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + PUNCT + sorted(set(_WORDS)))}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=SPECIAL[4:],
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def _config(arch: str, vocab: int, n_layers: int, d_model: int):
    import transformers as tf

    common: dict[str, Any] = dict(vocab_size=vocab, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    decoder: dict[str, Any] = dict(hidden_size=d_model, intermediate_size=2 * d_model, num_hidden_layers=n_layers, num_attention_heads=4, **common)
    if arch in ("llama", "mistral", "qwen2", "qwen3", "phi3"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config, "phi3": tf.Phi3Config}[arch]
        return cls(num_key_value_heads=2, **decoder)
    if arch in ("gemma", "gemma2", "gemma3"):
        cls = {"gemma": tf.GemmaConfig, "gemma2": tf.Gemma2Config, "gemma3": tf.Gemma3TextConfig}[arch]
        extra = {"sliding_window": 8} if arch != "gemma" else {}
        return cls(num_key_value_heads=1, head_dim=d_model // 4, **extra, **decoder)
    if arch == "phi":
        return tf.PhiConfig(max_position_embeddings=256, **decoder)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(max_position_embeddings=256, **decoder)
    raise ValueError(f"unknown tiny architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")


ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "phi", "gpt2", "gpt_neox")


def tiny_model(arch: str = "llama", n_layers: int = 4, d_model: int = 32, seed: int = 0, chat_template: bool = True) -> LoadedModel:
    """A randomly initialised model of family ``arch`` in float32 on CPU, wrapped for steering."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer(chat_template)
    config = _config(arch, len(tok), n_layers, d_model)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).float()
    return wrap_model(model, tok, name=f"tiny-{arch}")
