"""Special tokens as llama.cpp treats them: the ones it recognises by their text, the set that
ends generation, and how they are cut out of text before the rest is tokenized."""
from __future__ import annotations

# tokenizer.ggml.token_type values. SentencePiece's piece types use the same numbers.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# A vocabulary that has one of these but does not mark it CONTROL gets it marked CONTROL, and the
# end-of-generation set is built from them. The first match in each list wins (llama.cpp takes
# whichever its hash map yields first; the order here makes "<|im_end|>" beat "<|endoftext|>").
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
             "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
             "<end_of_utterance>")
EOM_TEXTS = ("<|eom_id|>",)
FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~["))
# gpt-oss's tokens that llama.cpp always renders and always parses (it makes them USER_DEFINED).
_ALWAYS_PARSED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


def find_specials(ids: dict[str, int], types: list[int], eot, eom, fim: dict) -> tuple:
    """Fill in EOT, EOM and FIM ids the metadata did not name, from their texts, and build the
    end-of-generation set. `types` is updated as llama.cpp updates its token attributes.
    Returns (eot, eom, fim, eog) where eog holds the EOS/EOT/EOM ids still to be added."""
    def find(texts):
        for text in texts:
            tid = ids.get(text)
            if tid is not None:
                types[tid] = CONTROL
                return tid
        return None

    eot = find(EOT_TEXTS) if eot is None else eot
    eom = find(EOM_TEXTS) if eom is None else eom
    fim = {role: find(FIM_TEXTS[role]) if tid is None else tid for role, tid in fim.items()}
    eog = {fim["fim_pad"], fim["fim_rep"], fim["fim_sep"]}
    for text in EOG_TEXTS:
        tid = ids.get(text)
        if tid is not None:
            types[tid] = CONTROL
            eog.add(tid)
    for text in _ALWAYS_PARSED:
        if text in ids:
            types[ids[text]] = USER_DEFINED
    return eot, eom, fim, eog


def prune_eog(texts: list[str], ids: dict[str, int], types: list[int], eog: set) -> None:
    """llama.cpp's two exceptions: with "<|return|>" and "<|call|>" (gpt-oss) or "<|calls|>" and
    "<|flush|>" (Solar Open), "<|end|>" is no end of generation but a user-defined token; with
    "<|tool_response>" (Gemma 4) or "<|plamo:eos|>", "</s>" is a normal token."""
    texts = {texts[tid] for tid in eog}
    end = ids.get("<|end|>")
    if (end in eog and texts & {"<|call|>", "<|calls|>"}
            and texts & {"<|return|>", "<|flush|>"}):
        eog.discard(end)
        types[end] = USER_DEFINED
    close = ids.get("</s>")
    if close in eog and texts & {"<|tool_response>", "<|plamo:eos|>"}:
        eog.discard(close)
        types[close] = NORMAL


def strip_flags(name: str, ids: dict[str, int], specials) -> tuple[frozenset, frozenset]:
    """(lstrip, rstrip): special tokens that eat the white space before / after them.
    llama.cpp sets these by model name: for Phi-3 every special token but <unk>, <s> and
    <|endoftext|> eats the white space after it (and so does </s>)."""
    name = name.lower()
    if "phi-3" in name or "phi3" in name:
        rstrip = {tid for _, tid in specials}
        if "</s>" in ids:
            rstrip.add(ids["</s>"])
        rstrip -= {ids.get(t) for t in ("<unk>", "<s>", "<|endoftext|>")}
        return frozenset(), frozenset(rstrip)
    return frozenset(), frozenset()


_C_SPACE = " \t\n\v\f\r"  # C's isspace, which llama.cpp strips with


def partition(text: str, specials: list[tuple[str, int]], lstrip=frozenset(),
              rstrip=frozenset()) -> list[str | int]:
    """Split `text` around special tokens (as ids), longest token first over the whole text.
    A token in `lstrip` / `rstrip` also takes the white space next to it on that side (only
    the text cut from the same run, as in llama.cpp)."""
    frags: list[str | int] = [text]
    for stext, sid in specials:
        if not any(isinstance(f, str) and stext in f for f in frags):
            continue
        new: list[str | int] = []
        for f in frags:
            if isinstance(f, int) or stext not in f:
                new.append(f)
                continue
            parts = f.split(stext)
            for k, part in enumerate(parts):
                if k and sid in rstrip:
                    part = part.lstrip(_C_SPACE)
                if k < len(parts) - 1 and sid in lstrip:
                    part = part.rstrip(_C_SPACE)
                if k:
                    new.append(sid)
                if part:
                    new.append(part)
        frags = new
    return frags
