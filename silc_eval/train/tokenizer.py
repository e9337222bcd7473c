"""A word-level Hugging Face tokenizer saved inside an open_clip local-dir checkpoint.

open_clip loads a local-dir model's tokenizer from the same folder when its config
names `hf_tokenizer_name`, so a checkpoint with a small closed vocabulary (SynthScenes)
stays loadable by plain open_clip, with a text embedding of a few hundred rows instead of 49408.
The end-of-text token has the highest id, so open_clip's default argmax pooling finds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

PAD, UNK, BOS, MASK, EOS = "[PAD]", "[UNK]", "[BOS]", "[MASK]", "[EOS]"
SPECIALS = (PAD, UNK, BOS, MASK, EOS)


def build_vocab(words: Sequence[str]) -> dict[str, int]:
    """Return {token: id}: PAD=0, UNK=1, BOS=2, MASK=3 (masked distillation), the sorted words, EOS last (highest id)."""
    ordered = [PAD, UNK, BOS, MASK] + sorted(set(words) - set(SPECIALS)) + [EOS]
    return {token: index for index, token in enumerate(ordered)}


def save_word_tokenizer(words: Sequence[str], folder: Path) -> int:
    """Write tokenizer.json and tokenizer_config.json for a lower-cased word-level vocabulary; returns its size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocab(words)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=UNK, pad_token=PAD, bos_token=BOS,
                                   eos_token=EOS, mask_token=MASK)
    fast.save_pretrained(str(folder))
    return len(vocab)
