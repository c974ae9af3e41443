"""A word-level tokenizer over a small vocabulary, for the built-in tiny teachers of every family: each word one
token, text lower-cased and split on spaces, commas and full stops, every text ended by </s> as T5's is (so an
empty prompt is one real token, never an all-padding row)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "</s>", "<unk>"]  # T5's ids: pad 0, eos 1, unk 2


def build_tokenizer(words: list[str], model_max_length: int = 512) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([*SPECIAL, *words]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(",", " "),
                                           normalizers.Replace(".", " ")])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length, padding_side="right")
