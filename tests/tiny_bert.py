"""A tiny random BERT written as a local HuggingFace model directory, for fast tests of anything that takes `--model`.

    from tiny_bert import write_tiny_bert   # tests/ is on sys.path under pytest
    model_dir = write_tiny_bert(tmp_path / "tiny")   # -> str, usable as TrainingConfig(model=model_dir)

The directory holds what `modules.backbone` reads from a real checkpoint: config.json and tf_model.h5
(TFBertModel.save_pretrained), vocab.txt and tokenizer_config.json (uncased). The vocabulary covers the
special tokens, ASCII punctuation, digits, single letters and their "##" continuations (so any ASCII
word tokenizes without [UNK]) and a few hundred common English words (`WORDS`, whole-word tokens).

Weights are random but reproducible: the same arguments give the same weights, in any process,
without touching TensorFlow's global seed.
"""
from __future__ import annotations

import json
import os
import string
from typing import List, Sequence, Union

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Common English words, all lower case; every one is a single token of the tiny vocabulary.
WORDS = tuple("""
the of and to a in is it you that he was for on are with as i his they be at one have this from or had by
not word but what some we can out other were all there when up use your how said an each she which do their
time if will way about many then them write would like so these her long make thing see him two has look
more day could go come did number sound no most people my over know water than call first who may down side
been now find any new work part take get place made live where after back little only round man year came
show every good me give our under name very through just form sentence great think say help low line differ
turn cause much mean before move right boy old too same tell does set three want air well also play small end
put home read hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth father head
stand own page should country found answer school grow study still learn plant cover food sun four between
state keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late
run while press close night real life few north open seem together next white children begin got walk example
ease paper group always music those both mark often letter until mile river car feet care second book carry
took science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face wood
main enough plain girl usual young ready above ever red list though feel talk bird soon body dog family direct
pose leave song measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best hour better true
during hundred five remember step early hold west ground interest reach fast verb sing listen six table travel
less morning ten simple several vowel toward war lay against pattern slow center love person money serve
appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark
machine note wait plan figure star box noun field rest correct able pound done beauty drive stood contain
front teach week final gave green oh quick develop ocean warm free minute strong special mind behind clear tail
produce fact street inch multiply nothing course stay wheel full force blue object decide surface deep moon
island foot system busy test record boat common gold possible plane instead dry wonder laugh thousand ago ran
check game shape equate hot miss brought heat snow tire bring yes distant fill east paint language among
company market price share shares percent million billion stock said says president government court police
report reported today yesterday week month quarter sales profit loss rose fell cent cents investors analysts
""".split())


def vocabulary(words: Sequence[str] = WORDS) -> List[str]:
    """Special tokens, punctuation, digits, letters, "##" letters and digits, then `words` (duplicates dropped)."""
    pieces = list(string.punctuation) + list(string.digits) + list(string.ascii_lowercase)
    pieces += ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab = list(SPECIAL_TOKENS)
    for token in pieces + [w.lower() for w in words]:
        if token not in vocab:
            vocab.append(token)
    return vocab


def write_tiny_bert(
    directory: Union[str, os.PathLike],
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 128,
    seed: int = 0,
    words: Sequence[str] = WORDS,
    initializer_range: float = 0.02,
) -> str:
    """Writes a tiny random uncased BERT to `directory` (created if needed); returns the directory as a str.

    initializer_range: std of the random kernels and embeddings. BERT's 0.02 gives, at hidden size 32, a [CLS]
    state that hardly depends on the input; 0.2 makes outputs differ between inputs, so adapters can learn
    and a wrong tokenisation or weight shows in the outputs.
    """
    import transformers

    from modules.backbone import build_backbone

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    vocab = vocabulary(words)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, initializer_range=initializer_range,
    )
    model = build_backbone(config)
    # Reproducible weights without TensorFlow's global seed: variables in name order, drawn from one numpy RNG
    # (kernels and embeddings ~ N(0, initializer_range) like BERT's initialiser; biases and LayerNorms as built).
    rng = np.random.default_rng(seed)
    for variable in sorted(model.variables, key=lambda v: v.name):
        if variable.name.rsplit("/", 1)[-1].split(":")[0] in ("kernel", "embeddings", "weight"):
            variable.assign(rng.normal(0.0, config.initializer_range, variable.shape).astype(np.float32))
    model.save_pretrained(directory)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": max_position_embeddings,
                   "tokenizer_class": "BertTokenizer"}, f, indent=2)
    return directory
