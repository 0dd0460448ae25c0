"""Tiny random base models, built offline in seconds: a WordPiece tokenizer trained with `tokenizers`
on a small corpus, and a 2-layer BERT. Real enough to train, save, load and serve end to end."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the movie was great and i loved it", "a terrible boring film", "wonderful acting and a moving story",
    "i hated every minute", "an excellent thriller", "bad script bad actors", "good fun for the whole family",
    "the plot made no sense", "brilliant and funny", "awful pacing and dull", "sports news: the team won",
    "markets fell sharply today", "new phone released with faster chip", "election results are in",
]


def build_tokenizer(path: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(CORPUS * 5, trainer)
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


def build_base_models(root: Path) -> Path:
    """The folder layout an operator uses: ``<root>/<org>/<name>`` with safetensors + tokenizer."""
    build_tiny_bert(root / "tiny" / "bert")
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
