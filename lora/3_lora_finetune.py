"""Step 3, LoRA variant: fine-tune the guardrail with low-rank adapters (peft) instead of every weight.

    uv run lora/3_lora_finetune.py
    uv run lora/3_lora_finetune.py --model ./ModernBERT-base --merge   # offline, also save a merged model

Same data, split, training loop, metrics and outputs as model_train/3_modern_bert_finetune.py
(shared through common.py); only the model is wrapped with LoRA adapters. Saves to
modernbert-llm-router-lora/ the adapter (a few MB) with the tokenizer, test_split.csv,
all_results.json and a model card; with --merge, also merged/, a plain model that
`pipeline("text-classification", model=".../merged")` loads without peft.
inference/4_inference.py accepts the adapter directory or the merged one.
"""

from dataclasses import dataclass, field
from pathlib import Path

from common import (
    TASKS,
    TrainConfig,
    UserError,
    build_trainer,
    load_trained_classifier,
    parse_config,
    prepare_run,
    run_cli,
    train_evaluate_save,
    write_json,
)

# Which linear layers get adapters, by model family (config.model_type).
DEFAULT_TARGET_MODULES = {
    "modernbert": ["attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}


@dataclass
class LoraTrainConfig(TrainConfig):
    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak learning rate; LoRA wants a higher one than full fine-tuning (5e-5)."}
    )
    lora_r: int = field(default=8, metadata={"help": "Rank of the adapter matrices."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the adapter input."})
    target_modules: str | None = field(
        default=None,
        metadata={"help": f"Comma-separated module names to adapt (default by model type: {DEFAULT_TARGET_MODULES})."},
    )
    merge: bool = field(default=False, metadata={"help": "Also save OUTPUT_DIR/merged: adapter folded into the base weights."})

    def __post_init__(self):
        if self.output_dir is None and self.task in TASKS:
            self.output_dir = TASKS[self.task].default_output_dir + "-lora"
        super().__post_init__()


def add_lora_adapters(model, config: LoraTrainConfig):
    """Freeze the base model and insert trainable adapters; the new classifier head stays trainable."""
    from peft import LoraConfig, TaskType, get_peft_model

    if config.target_modules:
        targets = [name.strip() for name in config.target_modules.split(",") if name.strip()]
    elif model.config.model_type in DEFAULT_TARGET_MODULES:
        targets = DEFAULT_TARGET_MODULES[model.config.model_type]
    else:
        raise UserError(f"no default LoRA targets for model type {model.config.model_type!r}; pass --target-modules.")
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=targets
    )
    return get_peft_model(model, lora), targets


def main(argv=None) -> dict:
    config = parse_config(LoraTrainConfig, argv, description=__doc__)

    # ---- data and base model, exactly as in the full fine-tune ----
    run = prepare_run(config)

    # ---- LoRA: freeze the base, train adapters + classifier head ----
    model, targets = add_lora_adapters(run.model, config)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA on {targets}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    trainer = build_trainer(config, model, run.tokenizer, run.datasets)

    # ---- train, score on the test split, save the adapter and all_results.json ----
    parameters = {"trainable_parameters": trainable, "total_parameters": total, "trainable_percent": 100 * trainable / total}
    results = train_evaluate_save(run, trainer, extra={"lora_target_modules": targets, **parameters})

    # ---- adapter size, and optionally the adapter folded into the base weights ----
    out = Path(config.output_dir)
    results["adapter_size_mb"] = (out / "adapter_model.safetensors").stat().st_size / 1e6
    if config.merge:
        _, adapted = load_trained_classifier(str(out), config.task)
        adapted.merge_and_unload().save_pretrained(out / "merged")
        run.tokenizer.save_pretrained(out / "merged")
        results["merged_dir"] = str(out / "merged")
    write_json(out / "all_results.json", results)
    print(f"adapter {results['adapter_size_mb']:.2f} MB" + (f"; merged model in {out}/merged/" if config.merge else ""))
    return results


if __name__ == "__main__": run_cli(main)
