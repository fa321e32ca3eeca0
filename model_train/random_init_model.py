"""Build a random-init ModernBERT with a locally trained tokenizer, for offline timing and tests.

    uv run model_train/random_init_model.py --size base --output-dir runs/modernbert-base-random

Speed does not depend on weight values, so a model with ModernBERT-base's exact architecture
(hidden 768, 22 layers, 12 heads, intermediate 1152, vocab 50368) trains and predicts exactly as
fast as the pretrained one. Its predictions are meaningless: use it to time steps 3 and 4 where the
hub is unreachable, never to judge accuracy. `--size tiny` builds the 2-layer model the tests use.

The tokenizer is a byte-level BPE trained on the texts of --data (ModernBERT's own tokenizer is
also byte-level BPE), with ModernBERT's special tokens; token counts per query are close to, not
identical with, the real tokenizer's.
"""

from dataclasses import dataclass, field
from pathlib import Path

from common import parse_config, read_table, run_cli, write_json

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# ModernBERT-base's published architecture; tiny keeps the same shape rules at toy size.
SIZES = {
    "base": dict(
        hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152, vocab_size=50368
    ),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=None),
}


@dataclass
class RandomModelConfig:
    output_dir: str = field(
        default="runs/modernbert-base-random", metadata={"help": "Where to save model + tokenizer."}
    )
    size: str = field(
        default="base", metadata={"help": "Architecture: base (ModernBERT-base) or tiny.", "choices": list(SIZES)}
    )
    data: str = field(default="data/dataset.xlsx", metadata={"help": "Texts to train the BPE tokenizer on."})
    text_column: str = field(default="text", metadata={"help": "Column holding the texts."})
    tokenizer_vocab: int = field(default=8000, metadata={"help": "Target BPE vocabulary size (smaller for tiny data)."})
    seed: int = field(default=0, metadata={"help": "Seed for the random weights."})


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer that wraps queries as [CLS] ... [SEP], like ModernBERT's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=8192,
    )


def build_random_modernbert(
    output_dir: str | Path, texts: list[str], size: str = "base", tokenizer_vocab: int = 8000, seed: int = 0
) -> dict:
    """Save a random-init ModernBERT (masked-LM layout, like the hub checkpoint) and a tokenizer; describe it."""
    import torch
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(texts, tokenizer_vocab)
    shape = dict(SIZES[size])
    shape["vocab_size"] = shape["vocab_size"] or len(tokenizer)
    config = ModernBertConfig(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    model = ModernBertForMaskedLM(config)  # the hub checkpoint's architecture: encoder + MLM head
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "output_dir": str(output_dir),
        "size": size,
        "parameters": n_params,
        "tokenizer_vocab": len(tokenizer),
        **shape,
    }


def main(argv=None) -> dict:
    config = parse_config(RandomModelConfig, argv, description=__doc__)
    texts = read_table(config.data)[config.text_column].astype(str).tolist()
    info = build_random_modernbert(config.output_dir, texts, config.size, config.tokenizer_vocab, config.seed)
    write_json(Path(config.output_dir) / "random_init.json", {**info, "note": "random weights: for timing only"})
    print(
        f"saved a random-init ModernBERT-{config.size} ({info['parameters'] / 1e6:.1f}M parameters) "
        f"to {config.output_dir}/"
    )
    return info


if __name__ == "__main__":
    run_cli(main)
