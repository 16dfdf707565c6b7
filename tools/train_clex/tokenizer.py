"""Train the SentencePiece tokenizer (BPE, byte fallback, LLaMA-2's settings) on the training split
and cache the token ids of each split.

    python tools/train_clex/tokenizer.py [--corpus build/train_clex/corpus] [--vocab 4096]

Writes CORPUS/../tokenizer.model and CORPUS/../{train,test}.ids.npy (uint16; the text of each split
encoded file by file, since the files are joined by blank lines, encoding the whole split gives
the same stream up to the joins; BOS is not inserted: the trainer sets the first token of every
window to BOS, as the perplexity evaluation does with every chunk).
"""
from __future__ import annotations

import argparse
import os

import numpy as np

BOS, EOS, UNK = 1, 2, 0


def train_tokenizer(train_txt: str, prefix: str, vocab: int) -> str:
    import sentencepiece as spm
    spm.SentencePieceTrainer.train(
        input=train_txt, model_prefix=prefix, vocab_size=vocab, model_type="bpe",
        character_coverage=0.99995, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, split_by_whitespace=True, max_sentence_length=16384,
        unk_id=UNK, bos_id=BOS, eos_id=EOS, pad_id=-1, num_threads=2, minloglevel=2,
        input_sentence_size=0, shuffle_input_sentence=False, train_extremely_large_corpus=False)
    return prefix + ".model"


def encode_file(sp, path: str) -> np.ndarray:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return np.asarray(sp.encode(text), dtype=np.uint16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="build/train_clex/corpus")
    ap.add_argument("--vocab", type=int, default=4096)
    a = ap.parse_args()
    import sentencepiece as spm
    root = os.path.dirname(os.path.abspath(a.corpus))
    model = train_tokenizer(os.path.join(a.corpus, "train.txt"), os.path.join(root, "tokenizer"), a.vocab)
    sp = spm.SentencePieceProcessor(model_file=model)
    for split in ("train", "test"):
        ids = encode_file(sp, os.path.join(a.corpus, f"{split}.txt"))
        np.save(os.path.join(root, f"{split}.ids.npy"), ids)
        print(f"{split}: {ids.size} tokens")


if __name__ == "__main__":
    main()
