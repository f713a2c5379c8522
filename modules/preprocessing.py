"""The Transform stage: BERT WordPiece tokenisation inside the TF graph, token for token like HuggingFace.

`preprocessing_fn` (TFX Transform) and `tokenize_pairs` / `BertPairTokenizer` (anything else: the
Trainer's raw-text serving signature goes through the saved Transform graph, benchmarks and tests
call the tokenizer directly) share ONE implementation, which reproduces HuggingFace's
`BertTokenizerFast` (the Rust `tokenizers` BertNormalizer + BertPreTokenizer + WordPiece + "longest_first"
truncation), the tokenizer `AutoTokenizer` returns for BERT checkpoints:

  1. clean: drop NUL, U+FFFD, control (Cc except tab/newline/CR), format (Cf, e.g. zero-width space,
     soft hyphen) and private-use (Co) characters; every other whitespace (Zs, Zl, Zp: no-break space,
     ideographic space...) separates words;
  2. uncased backbones only: lower-case character by character (Unicode full lower case, no case
     folding: "ß" stays "ß", full-width "Ａ" becomes full-width "ａ"), NFD, drop non-spacing marks
     ("Café" -> "cafe"); cased backbones keep case and accents and get no Unicode normalisation;
  3. split on whitespace, split off every punctuation character (all non-alphanumeric ASCII and
     Unicode P*) and every CJK ideograph as one-character words;
  4. WordPiece, greedy longest match; a word that does not decompose, or is longer than 100
     characters, becomes [UNK];
  5. `[CLS] a [SEP] b [SEP]` (single-sentence tasks: `[CLS] a [SEP]`), cut to `max_seq_length`
     by `truncate_longest_first`, padded with 0.

The vocabulary is embedded in the graph (a FastWordpiece model built from the vocab list), so a saved
Transform graph works on machines without the backbone's files. Consumers of the graph must
`import tensorflow_text` before loading it (its ops are custom ops).

Known differences from BertTokenizerFast, each found by tokenising every Unicode code point and the
GLUE files with both (tests/test_preprocessing.py asserts one example of each):
  - the strings "[CLS]", "[SEP]", "[UNK]", "[PAD]", "[MASK]" inside raw text are recognised by
    HuggingFace as special tokens; here they are ordinary text ("[", "sep", "]"), so input text cannot
    inject segment structure. None occurs in the GLUE data.
  - characters that Unicode added or re-categorised after the (older) Unicode tables of HuggingFace's
    Rust crates: e.g. U+2E4F CORNISH VERSE DIVIDER, U+0890 ARABIC POUND MARK ABOVE, recent combining
    marks of Indic and historic scripts. Here (RE2/ICU tables) such punctuation is split off,
    format characters are dropped and marks are stripped; HuggingFace keeps them inside the word, which
    then usually becomes [UNK] anyway. 568 of the 1,112,064 code points (149 for cased backbones), all
    in rarely used scripts; none occurs in the GLUE files (all 130,045 distinct text cells identical).
The slow Python `BertTokenizer` differs from BertTokenizerFast (and so from this module) in ways this
module deliberately does not follow: on odd truncation budgets it gives the extra token to the first
segment, not to the longer one (see `truncate_longest_first`); it NFC-normalises (cased models:
"e" + U+0301 becomes "é"); it drops unassigned code points; and it treats U+2B820-U+2B91F as CJK,
where the Rust tokenizer's range starts at U+2B920.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFT needs Keras 2

from typing import Any, Dict, List, Optional, Union

import tensorflow as tf
import tensorflow_text as text

from modules import backbone, glue

# Output features of the Transform stage.
INPUT_IDS = "input_ids"  # int64 [max_seq_length], padded with 0
ATTENTION_MASK = "attention_mask"  # int64 [max_seq_length]: 1 for real tokens, 0 for padding
TOKEN_TYPE_IDS = "token_type_ids"  # int64 [max_seq_length]: 0 for [CLS] a [SEP], 1 for b [SEP]
LENGTH = "length"  # int64 scalar: number of real tokens, for bucketing / dynamic padding
LABEL = glue.FEATURE_LABEL  # passed through: int64 class id or float32 score; absent for unlabeled data

# A label missing from a sparse (VarLen) input: an impossible class id / score, so it cannot pass for real.
MISSING_LABEL = -1

CLS_TOKEN, SEP_TOKEN, UNK_TOKEN = "[CLS]", "[SEP]", "[UNK]"
MAX_CHARS_PER_WORD = 100  # HuggingFace's WordPiece max_input_chars_per_word

# Cc except \t \n \r, U+FFFD, Cf and Co: removed like HuggingFace's clean_text. (Cs cannot occur in UTF-8.)
_REMOVED_CHARS = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\x{FFFD}\p{Cf}\p{Co}]+"
_WHITESPACE = r"[\s\p{Z}]+"
_PUNCTUATION = r"[!-/:-@\[-`{-~\p{P}]"
# The Rust tokenizer's CJK blocks; its fifth range starts at U+2B920 (Python's at U+2B820): followed as is.
_CJK = (
    r"[\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2B73F}\x{2B740}-\x{2B81F}"
    r"\x{2B920}-\x{2CEAF}\x{F900}-\x{FAFF}\x{2F800}-\x{2FA1F}]"
)


def read_vocab(vocab_file: str) -> List[str]:
    """The WordPiece vocabulary, one token per line, id = line number (as HuggingFace reads vocab.txt)."""
    with open(vocab_file, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def normalize(texts: tf.Tensor, do_lower_case: bool) -> tf.Tensor:
    """Steps 1-2 of the module docstring, on a string tensor of any shape."""
    texts = tf.strings.regex_replace(texts, _REMOVED_CHARS, "")
    if do_lower_case:
        # ICU lower-cases a word-final capital sigma to "ς"; HuggingFace lower-cases per character ("σ").
        texts = tf.strings.regex_replace(texts, "Σ", "σ")
        texts = tf.strings.lower(texts, encoding="utf-8")
        texts = text.normalize_utf8(texts, "NFD")
        texts = tf.strings.regex_replace(texts, r"\p{Mn}+", "")
    return texts


def split_words(texts: tf.Tensor) -> tf.RaggedTensor:
    """Step 3: [batch] normalised strings -> [batch, (words)]."""
    return text.regex_split(
        texts,
        delim_regex_pattern=f"{_WHITESPACE}|{_PUNCTUATION}|{_CJK}",
        keep_delim_regex_pattern=f"{_PUNCTUATION}|{_CJK}",
    )


def truncate_longest_first(len_a: tf.Tensor, len_b: tf.Tensor, budget: int) -> tuple[tf.Tensor, tf.Tensor]:
    """How many tokens of segments a and b to keep so that the sum is <= budget, as BertTokenizerFast's
    "longest_first": tokens come off the end of the longer segment until both are equally long, then off both alike.

    When the budget left is odd, the extra token stays with the segment that was longer, with b on a
    tie (Rust tokenizers: shorter gets budget // 2). The slow Python BertTokenizer gives it to a always.
    """
    shorter = tf.minimum(len_a, len_b)
    keep_shorter = tf.where(2 * shorter <= budget, shorter, budget // 2)
    keep_longer = tf.minimum(tf.maximum(len_a, len_b), budget - keep_shorter)
    a_is_longer = len_a > len_b
    return tf.where(a_is_longer, keep_longer, keep_shorter), tf.where(a_is_longer, keep_shorter, keep_longer)


class BertPairTokenizer:
    """The backbone's WordPiece tokenizer as TF ops. Build once, call on batches of raw strings.

    Built inside a graph (TFT tracing), the vocabulary becomes a constant of that graph.
    """

    def __init__(self, settings: backbone.TokenizerSettings, max_seq_length: int):
        if max_seq_length < 3:
            raise ValueError(f"max_seq_length={max_seq_length}: needs room for [CLS] and two [SEP] at least.")
        vocab = read_vocab(settings.vocab_file)
        missing = [t for t in (CLS_TOKEN, SEP_TOKEN, UNK_TOKEN) if t not in vocab]
        if missing:
            raise ValueError(f"{settings.vocab_file} lacks {missing}: not a BERT WordPiece vocabulary.")
        self.do_lower_case = settings.do_lower_case
        self.max_seq_length = max_seq_length
        self.cls_id, self.sep_id = vocab.index(CLS_TOKEN), vocab.index(SEP_TOKEN)
        # Words arrive split (step 3); longer ones than MAX_CHARS_PER_WORD characters are replaced by [UNK]
        # first, so the byte limit here (4 bytes per UTF-8 character at most) never cuts in.
        self._wordpiece = text.FastWordpieceTokenizer(
            vocab=vocab,
            suffix_indicator="##",
            max_bytes_per_word=4 * MAX_CHARS_PER_WORD,
            token_out_type=tf.int64,
            unknown_token=UNK_TOKEN,
            no_pretokenization=True,
        )

    def wordpiece_ids(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """Steps 1-4: [batch] raw strings -> [batch, (token ids)], no special tokens."""
        words = split_words(normalize(texts, self.do_lower_case))
        too_long = tf.strings.length(words.flat_values, unit="UTF8_CHAR") > MAX_CHARS_PER_WORD
        words = words.with_flat_values(tf.where(too_long, UNK_TOKEN, words.flat_values))
        return self._wordpiece.tokenize(words).merge_dims(1, 2)

    def __call__(self, text_a: tf.Tensor, text_b: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
        """[batch] raw strings (text_b None: single-sentence task) -> the model's input features."""
        a = self.wordpiece_ids(text_a)
        if text_b is None:
            return self._pack([(a, tf.minimum(a.row_lengths(), self.max_seq_length - 2))])
        b = self.wordpiece_ids(text_b)
        keep_a, keep_b = truncate_longest_first(a.row_lengths(), b.row_lengths(), self.max_seq_length - 3)
        return self._pack([(a, keep_a), (b, keep_b)])

    def _pack(self, segments: List[tuple[tf.RaggedTensor, tf.Tensor]]) -> Dict[str, tf.Tensor]:
        """`[CLS] a [SEP]` (then `b [SEP]`, token type 1) from the first `keep` tokens of each segment, padded
        with 0 to max_seq_length. Written on dense positions, one gather per segment: ragged slicing and
        text.combine_segments add validation ops per step, which made tracing the Transform graph slow."""
        position = tf.range(self.max_seq_length, dtype=tf.int64)[tf.newaxis, :]
        start = tf.ones_like(segments[0][1])[:, tf.newaxis]  # where a segment's first token goes
        ids = tf.where(position == 0, tf.constant(self.cls_id, tf.int64), tf.constant(0, tf.int64))
        type_ids = tf.zeros_like(ids)
        for type_id, (tokens, keep) in enumerate(segments):
            end = start + keep[:, tf.newaxis]  # the segment's [SEP]
            inside = (position >= start) & (position < end)
            padded = tf.concat([tokens.flat_values, tf.zeros([1], tf.int64)], 0)  # outside: the 0 at the end
            index = tf.where(inside, tokens.row_starts()[:, tf.newaxis] + position - start,
                             tf.size(padded, tf.int64) - 1)
            ids = tf.where(inside, tf.gather(padded, index), ids)
            ids = tf.where(position == end, tf.constant(self.sep_id, tf.int64), ids)
            type_ids = tf.where((position >= start) & (position <= end), tf.constant(type_id, tf.int64), type_ids)
            start = end + 1
        return {
            INPUT_IDS: ids,
            ATTENTION_MASK: tf.cast(position < start, tf.int64),
            TOKEN_TYPE_IDS: type_ids,
            LENGTH: start[:, 0],
        }


def tokenize_pairs(
    text_a: tf.Tensor,
    text_b: Optional[tf.Tensor],
    settings: backbone.TokenizerSettings,
    max_seq_length: int,
) -> Dict[str, tf.Tensor]:
    """One-off tokenisation of [batch] string tensors (text_b None: single-sentence). See BertPairTokenizer."""
    return BertPairTokenizer(settings, max_seq_length)(text_a, text_b)


def _as_vector(feature: Union[tf.Tensor, tf.SparseTensor], default: Any) -> tf.Tensor:
    """A one-value-per-example feature as a [batch] tensor, whether parsed as [batch], [batch, 1] or VarLen."""
    if isinstance(feature, tf.SparseTensor):
        padded = tf.SparseTensor(feature.indices, feature.values, [feature.dense_shape[0], 1])
        feature = tf.sparse.to_dense(padded, default_value=tf.cast(default, feature.dtype))
    if feature.shape.rank == 2:
        feature = tf.squeeze(feature, axis=1)
    return feature


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, tf.Tensor]:
    """TFX Transform entry point. custom_config: "model" (backbone), "max_seq_length" (int), and "task_spec" (the
    task description, GlueTask.to_spec) or "task" (a GLUE name).

    Uses no analyzers: the output depends on each example alone, so serving reproduces it exactly.
    """
    settings = backbone.tokenizer_settings(backbone.resolve_model_dir(custom_config.get("model", backbone.DEFAULT_MODEL)))
    task = glue.task_from_config(custom_config)
    tokenizer = BertPairTokenizer(settings, int(custom_config["max_seq_length"]))
    text_a = _as_vector(inputs[glue.FEATURE_TEXT_A], "")
    text_b = None if task.text_b is None else _as_vector(inputs[glue.FEATURE_TEXT_B], "")
    outputs = tokenizer(text_a, text_b)
    if LABEL in inputs:
        outputs[LABEL] = _as_vector(inputs[LABEL], MISSING_LABEL)
    return outputs
