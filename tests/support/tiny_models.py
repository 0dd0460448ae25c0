"""Tiny random base models, built offline in seconds: tokenizers trained with `tokenizers` on a small
corpus, and 2-layer BERT (encoder), GPT-2 (decoder) and T5 (encoder-decoder) models. Real enough to
train, save, load and serve end to end."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the movie was great and i loved it", "a terrible boring film", "wonderful acting and a moving story",
    "i hated every minute", "an excellent thriller", "bad script bad actors", "good fun for the whole family",
    "the plot made no sense", "brilliant and funny", "awful pacing and dull", "sports news: the team won",
    "markets fell sharply today", "new phone released with faster chip", "election results are in",
]


def _wordpiece_vocab(special_tokens: list[str]) -> dict[str, int]:
    """Every corpus word whole, plus every character alone and as a continuation, in sorted order.
    Built by hand because `tokenizers`' WordPiece trainer breaks frequency ties by hash order, so its
    vocabulary (size included) changed from one session to the next and moved the quality floors."""
    words = sorted({w for line in CORPUS for w in line.replace(":", " : ").split()})
    chars = sorted({c for w in words for c in w} | set(".,?!'"))  # the task data's punctuation too
    pieces = special_tokens + words + [c for c in chars if c not in words] + [f"##{c}" for c in chars]
    return {piece: i for i, piece in enumerate(pieces)}


def build_tokenizer(path: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(_wordpiece_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
                                     unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    fast.save_pretrained(str(path))
    return fast


def build_tiny_bert(path: Path) -> Path:
    from transformers import BertConfig, BertModel

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(str(path), safe_serialization=True)
    return path


def build_tiny_gpt2(path: Path, n_positions: int = 256) -> Path:
    """A byte-level BPE tokenizer and a 2-layer GPT-2, without a chat template (jobs pass one).
    ``n_positions``: its context, e.g. longer for tests of long generations."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 5, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=n_positions)
    fast.save_pretrained(str(path))
    eos = fast.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(vocab_size=len(fast), n_embd=32, n_layer=2, n_head=2, n_positions=n_positions,
                        bos_token_id=eos, eos_token_id=eos)
    GPT2LMHeadModel(config).save_pretrained(str(path), safe_serialization=True)
    return path


def build_tiny_t5(path: Path) -> Path:
    """A WordPiece tokenizer ending each text with </s>, and a 2-layer T5 encoder-decoder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(_wordpiece_vocab(["<pad>", "</s>", "<unk>"]), unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=256)
    fast.save_pretrained(str(path))
    config = T5Config(vocab_size=len(fast), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
                      pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                      decoder_start_token_id=fast.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(str(path), safe_serialization=True)
    return path


def build_base_models(root: Path) -> Path:
    """The folder layout an operator uses: ``<root>/<org>/<name>`` with safetensors + tokenizer. The
    random weights are seeded, so every test session starts from the same base models and quality
    floors do not move with the draw."""
    import torch

    torch.manual_seed(0)
    build_tiny_bert(root / "tiny" / "bert")
    build_tiny_gpt2(root / "tiny" / "gpt2")
    build_tiny_t5(root / "tiny" / "t5")
    # Valid config and tokenizer but damaged weights: passes validation, fails when the worker loads it.
    broken = root / "tiny" / "broken"
    build_tokenizer(broken)
    (broken / "config.json").write_text((root / "tiny" / "bert" / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    # A folder with pickle weights only, which the service must refuse.
    pickled = root / "tiny" / "pickled"
    pickled.mkdir(parents=True, exist_ok=True)
    (pickled / "config.json").write_text('{"model_type": "bert"}')
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return root
