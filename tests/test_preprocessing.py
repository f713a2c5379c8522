"""The Transform stage must feed the backbone exactly the ids HuggingFace's tokenizer would.

Reference: transformers.BertTokenizerFast (what AutoTokenizer gives for BERT). The slow Python
BertTokenizer is compared too, with its one difference on GLUE (truncation tie-break) asserted.
"""
import csv
import functools
import os
import shutil
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
import transformers
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from conftest import glue_dir_or_skip
from modules import backbone, glue, preprocessing

MODEL_FEATURES = (preprocessing.INPUT_IDS, preprocessing.TOKEN_TYPE_IDS, preprocessing.ATTENTION_MASK)
DEV_SETS = ("mrpc", "rte")


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    return backbone.resolve_model_dir("minilm")


@pytest.fixture(scope="module")
def settings(minilm_dir: str) -> backbone.TokenizerSettings:
    return backbone.tokenizer_settings(minilm_dir)


@pytest.fixture(scope="module")
def hf_fast(minilm_dir: str) -> transformers.BertTokenizerFast:
    return transformers.BertTokenizerFast.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def hf_slow(minilm_dir: str) -> transformers.BertTokenizer:
    return transformers.BertTokenizer.from_pretrained(minilm_dir)


def read_dev_set(task_name: str) -> Tuple[List[str], List[str], List[int]]:
    """(sentence1s, sentence2s, class ids) of a task's real GLUE dev file."""
    task = glue.get_task(task_name)
    path = os.path.join(glue_dir_or_skip(task.directory), task.directory, task.splits["eval"])
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: MRPC starts with a BOM
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return (
        [row[task.text_a] for row in rows],
        [row[task.text_b] for row in rows],
        [task.label_names.index(row[task.label]) for row in rows],
    )


def hf_encode(tokenizer, text_a: List[str], text_b: Optional[List[str]], max_seq_length: int) -> Dict[str, np.ndarray]:
    return dict(
        tokenizer(
            text_a, text_b, max_length=max_seq_length, truncation="longest_first", padding="max_length",
            return_tensors="np",
        )
    )


def ours(settings, text_a: List[str], text_b: Optional[List[str]], max_seq_length: int) -> Dict[str, np.ndarray]:
    features = preprocessing.tokenize_pairs(
        tf.constant(text_a), None if text_b is None else tf.constant(text_b), settings, max_seq_length
    )
    return {name: value.numpy() for name, value in features.items()}


def differing_rows(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> List[int]:
    return [i for i in range(len(a[preprocessing.INPUT_IDS])) if any((a[k][i] != b[k][i]).any() for k in MODEL_FEATURES)]


@pytest.fixture(scope="module")
def tft_run(tmp_path_factory, minilm_dir: str):
    """MRPC dev + RTE dev (both pair tasks) through TFT AnalyzeAndTransformDataset at length 128.

    The backbone is a copy that is deleted afterwards: the written transform graph must not need it.
    """
    rows = []
    for task_name in DEV_SETS:
        for a, b, label in zip(*read_dev_set(task_name)):
            rows.append({glue.FEATURE_TEXT_A: a, glue.FEATURE_TEXT_B: b, glue.FEATURE_LABEL: label})
    tmp = tmp_path_factory.mktemp("tft")
    model_copy = tmp / "backbone"
    model_copy.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(minilm_dir, name), model_copy / name)
    raw_metadata = dataset_metadata.DatasetMetadata(
        schema_utils.schema_from_feature_spec(
            {
                glue.FEATURE_TEXT_A: tf.io.FixedLenFeature([], tf.string),
                glue.FEATURE_TEXT_B: tf.io.FixedLenFeature([], tf.string),
                glue.FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64),
            }
        )
    )
    custom_config = {"model": str(model_copy), "max_seq_length": 128, "task": "rte"}
    fn = functools.partial(preprocessing.preprocessing_fn, custom_config=custom_config)
    with tft_beam.Context(temp_dir=str(tmp / "beam")):
        (transformed, _), transform_fn = (rows, raw_metadata) | tft_beam.AnalyzeAndTransformDataset(
            fn, output_record_batches=False
        )
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp / "transform_output"))
    shutil.rmtree(model_copy)
    return rows, transformed, str(tmp / "transform_output")


def test_tft_output_matches_hf_fast_on_mrpc_and_rte_dev(tft_run, hf_fast):
    rows, transformed, _ = tft_run
    expected = hf_encode(hf_fast, [r[glue.FEATURE_TEXT_A] for r in rows], [r[glue.FEATURE_TEXT_B] for r in rows], 128)
    got = {k: np.stack([t[k] for t in transformed]) for k in MODEL_FEATURES}
    assert len(transformed) == 408 + 277
    assert differing_rows(got, expected) == []
    assert [t[preprocessing.LENGTH] for t in transformed] == list(expected["attention_mask"].sum(axis=1))
    assert [t[preprocessing.LABEL] for t in transformed] == [r[glue.FEATURE_LABEL] for r in rows]
    assert sum(t[preprocessing.LENGTH] == 128 for t in transformed) > 0  # RTE premises: truncation ran


def test_written_transform_graph_embeds_the_vocabulary(tft_run):
    rows, transformed, output_dir = tft_run
    files = [name for _, _, names in os.walk(output_dir) for name in names]
    assert "vocab.txt" not in files
    tf_transform_output = tft.TFTransformOutput(output_dir)
    assert tf_transform_output.transformed_feature_spec()[preprocessing.INPUT_IDS] == tf.io.FixedLenFeature(
        [128], tf.int64
    )
    raw = {k: tf.constant([r[k] for r in rows[:5]]) for k in (glue.FEATURE_TEXT_A, glue.FEATURE_TEXT_B)}
    reloaded = tf_transform_output.transform_raw_features(raw)  # the backbone copy is gone by now
    assert preprocessing.LABEL not in reloaded
    for name in (*MODEL_FEATURES, preprocessing.LENGTH):
        np.testing.assert_array_equal(reloaded[name].numpy(), np.stack([t[name] for t in transformed[:5]]))


@pytest.mark.parametrize("max_seq_length", [128, 32])
@pytest.mark.parametrize("task_name", DEV_SETS)
def test_matches_hf_fast_on_dev_set(settings, hf_fast, task_name: str, max_seq_length: int):
    text_a, text_b, _ = read_dev_set(task_name)
    got = ours(settings, text_a, text_b, max_seq_length)
    assert differing_rows(got, hf_encode(hf_fast, text_a, text_b, max_seq_length)) == []
    np.testing.assert_array_equal(got[preprocessing.LENGTH], got[preprocessing.ATTENTION_MASK].sum(axis=1))


@pytest.mark.parametrize("max_seq_length", [128, 32])
@pytest.mark.parametrize("task_name", DEV_SETS)
def test_differs_from_hf_slow_only_by_truncation_tie_break(settings, hf_slow, task_name: str, max_seq_length: int):
    """Known exception: when both segments must be cut and the budget is odd, BertTokenizer (slow) keeps the
    extra token in segment a; BertTokenizerFast and we keep it in the longer segment (b on a tie)."""
    text_a, text_b, _ = read_dev_set(task_name)
    budget = max_seq_length - 3
    lengths = [(len(hf_slow.tokenize(a)), len(hf_slow.tokenize(b))) for a, b in zip(text_a, text_b)]
    tie_break_rows = [i for i, (la, lb) in enumerate(lengths) if budget % 2 == 1 and 2 * min(la, lb) > budget and lb >= la]
    got = ours(settings, text_a, text_b, max_seq_length)
    assert differing_rows(got, hf_encode(hf_slow, text_a, text_b, max_seq_length)) == tie_break_rows
    if max_seq_length == 32:
        assert tie_break_rows  # the exception is exercised, not vacuous
    for i in tie_break_rows:  # segment a got budget // 2 tokens here, one more in the slow tokenizer
        assert list(got[preprocessing.INPUT_IDS][i]).index(102) - 1 == budget // 2


def test_truncation_rule_matches_hf_fast_on_every_small_case(settings, hf_fast):
    """Every split of short segments and budgets, ties and empty segments included."""
    cases = [(la, lb, length) for la in range(8) for lb in range(8) for length in range(3, 14)]
    for length in range(3, 14):
        batch = [(" ".join("a" * la), " ".join("b" * lb)) for la, lb, n in cases if n == length]
        a, b = [x for x, _ in batch], [y for _, y in batch]
        assert differing_rows(ours(settings, a, b, length), hf_encode(hf_fast, a, b, length)) == []


def test_single_sentence_task_has_one_segment(hf_fast):
    sentences = ["A gorgeous, witty, seductive movie.", "It's a long sentence that gets cut somewhere in the middle."]
    inputs = {
        glue.FEATURE_TEXT_A: tf.constant(sentences),
        glue.FEATURE_TEXT_B: tf.constant(["", ""]),
        glue.FEATURE_LABEL: tf.constant([1, 0], tf.int64),
    }
    got = preprocessing.preprocessing_fn(inputs, {"model": "minilm", "max_seq_length": 12, "task": "sst2"})
    expected = hf_encode(hf_fast, sentences, None, 12)
    for name in MODEL_FEATURES:
        np.testing.assert_array_equal(got[name].numpy(), expected[name])
    assert not got[preprocessing.TOKEN_TYPE_IDS].numpy().any()
    assert list(got[preprocessing.LENGTH].numpy()) == [10, 12]
    assert list(got[preprocessing.LABEL].numpy()) == [1, 0]


def test_empty_strings(settings, hf_fast):
    pairs = [("", ""), ("a", ""), ("", "b")]
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    got = ours(settings, a, b, 8)
    assert differing_rows(got, hf_encode(hf_fast, a, b, 8)) == []
    assert list(got[preprocessing.INPUT_IDS][0][:4]) == [101, 102, 102, 0]
    single = ours(settings, [""], None, 8)
    assert list(single[preprocessing.INPUT_IDS][0][:3]) == [101, 102, 0]
    assert list(single[preprocessing.LENGTH]) == [2]


def test_tfx_input_shapes_missing_and_float_labels():
    """SchemaGen may give [batch, 1] dense or VarLen (sparse) features; test splits have no label."""
    config = {"model": "minilm", "max_seq_length": 8, "task": "stsb"}
    dense = {
        glue.FEATURE_TEXT_A: tf.constant([["Hello"], ["World"]]),
        glue.FEATURE_TEXT_B: tf.constant([["there"], ["!"]]),
        glue.FEATURE_LABEL: tf.constant([[4.5], [0.25]], tf.float32),
    }
    from_dense = preprocessing.preprocessing_fn(dense, config)
    assert from_dense[preprocessing.LABEL].dtype == tf.float32
    assert list(from_dense[preprocessing.LABEL].numpy()) == [4.5, 0.25]
    sparse = {name: tf.sparse.from_dense(value) for name, value in dense.items() if name != glue.FEATURE_LABEL}
    from_sparse = preprocessing.preprocessing_fn(sparse, config)
    assert preprocessing.LABEL not in from_sparse
    for name in (*MODEL_FEATURES, preprocessing.LENGTH):
        np.testing.assert_array_equal(from_sparse[name].numpy(), from_dense[name].numpy())
    one_label_missing = tf.SparseTensor(indices=[[0, 0]], values=tf.constant([1], tf.int64), dense_shape=[2, 1])
    labels = preprocessing.preprocessing_fn(
        {**sparse, glue.FEATURE_LABEL: one_label_missing}, {**config, "task": "rte"}
    )[preprocessing.LABEL]
    assert list(labels.numpy()) == [1, preprocessing.MISSING_LABEL]


# Unicode cases, uncased MiniLM vs BertTokenizerFast: all identical.
UNICODE_CASES = [
    "Café CAFÉ naïve résumé",  # accents stripped after lower-casing
    "e\u0301 E\u0301",  # decomposed accent
    "日本語のテキスト 中文",  # CJK ideographs are words of their own; kana are not
    "I ❤️ NY 😀! hi😀there",  # emoji: not in the vocab, the whole word becomes [UNK]
    "a\x00b\x07c\u200bd\u00ade\ufeff f\ufffdg",  # control / format chars removed (not turned into spaces)
    "a\u00a0b\u3000c\u2009d\u2028e\tf\ng\r\nh",  # no-break, ideographic, thin space, line separator...
    "Straße STRASSE ß ẞ",  # lower(), not casefold(): ß stays ß
    "ＦＵＬＬｗｉｄｔｈ １２３ ＡＢＣ",  # no NFKC: full-width letters stay full-width
    "ΟΔΟΣ Σίσυφος",  # capital sigma lower-cased per character, no final-sigma rule
    "İstanbul DŽ ǅ ﬁne x² ½ Ⅻ",  # special lower-casing, ligatures, compatibility characters
    "€100 $5 ©2020 a+b=c ^_^ `x` ~y|z",  # ASCII symbols split off, non-ASCII symbols are not
    "«quoted» „German“ 'single' — dash… ¿¡",  # Unicode punctuation split off
    "a" * 100 + " " + "a" * 101,  # longer than 100 characters: [UNK]
    "б" * 60 + " " + "б" * 101,  # counted in characters, not UTF-8 bytes (60 characters are 120 bytes)
    "\U0002B820x \U0002B920y \U00020000z",  # CJK extension ranges as the Rust tokenizer has them
]
# Known differences: input -> (BertTokenizerFast tokens, our tokens), with the reason.
KNOWN_DIFFERENCES = {
    # HuggingFace recognises special-token strings inside raw text; we treat them as text.
    "a [SEP] b": (["a", "[SEP]", "b"], ["a", "[", "sep", "]", "b"]),
    # U+2E4F CORNISH VERSE DIVIDER (Unicode 11, punctuation): newer than HuggingFace's Rust Unicode tables.
    "a\u2e4fb": (["[UNK]"], ["a", "[UNK]", "b"]),
}


def test_unicode_edge_cases_match_hf_fast(settings, hf_fast):
    got = preprocessing.BertPairTokenizer(settings, 512).wordpiece_ids(tf.constant(UNICODE_CASES)).to_list()
    for text, ids in zip(UNICODE_CASES, got):
        assert hf_fast.convert_ids_to_tokens(ids) == hf_fast.tokenize(text), repr(text)


def test_known_differences_from_hf_fast(settings, hf_fast):
    texts = list(KNOWN_DIFFERENCES)
    got = preprocessing.BertPairTokenizer(settings, 512).wordpiece_ids(tf.constant(texts)).to_list()
    for text, ids in zip(texts, got):
        assert (hf_fast.tokenize(text), hf_fast.convert_ids_to_tokens(ids)) == KNOWN_DIFFERENCES[text]


CASED_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "hello", "HE", "##LL", "##O", "Café", "cafe",
               "na", "##ï", "##ve", "Straße", "ß", "!", ",", "ＡＢ", "日", "Σ", "##ς"]  # fmt: skip
CASED_TEXTS = ["Hello hello HELLO!", "Café cafe, naïve", "Straße ß", "ＡＢ 日", "ΣΣ Σς"]


def test_cased_backbone_keeps_case_and_accents(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(CASED_VOCAB) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = backbone.tokenizer_settings(str(tmp_path))
    assert not cased.do_lower_case
    got = ours(cased, CASED_TEXTS, None, 16)
    for reference in (
        transformers.BertTokenizer.from_pretrained(str(tmp_path)),
        transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=False),
    ):
        assert differing_rows(got, hf_encode(reference, CASED_TEXTS, None, 16)) == [], type(reference).__name__
    assert list(got[preprocessing.INPUT_IDS][0][1:6]) == [5, 6, 7, 8, 9]  # Hello hello HE ##LL ##O


def test_rejects_too_short_max_seq_length(settings):
    with pytest.raises(ValueError, match="max_seq_length"):
        preprocessing.BertPairTokenizer(settings, 2)
