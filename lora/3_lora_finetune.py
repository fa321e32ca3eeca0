"""Step 3, LoRA variant: fine-tune the guardrail with low-rank adapters (peft) instead of every weight.

    uv run lora/3_lora_finetune.py
    uv run lora/3_lora_finetune.py --model ./ModernBERT-base --merge   # offline, also save a merged model
    uv run lora/3_lora_finetune.py --task intent                        # or category, jailbreak

The same story as model_train/3_modern_bert_finetune.py (same data, split, Trainer, metrics and
outputs, through model_train/training.py); only the model is wrapped with LoRA adapters. Saves to
modernbert-llm-router-lora/ the adapter (a few MB) with the tokenizer, test_split.csv,
all_results.json and a model card; with --merge, also merged/, a plain model that
`pipeline("text-classification", model=".../merged")` loads without peft.
inference/4_inference.py accepts the adapter directory or the merged one.
"""

import json
import time
from dataclasses import dataclass, field
from typing import ClassVar

from transformers import AutoTokenizer, EarlyStoppingCallback, Trainer, set_seed

from common import (
    KINDS,
    UserError,
    get_hf_token,
    get_task,
    print_metrics,
    resolve_model,
    run_cli,
    split_frame,
    write_json,
)
from model_train.training import (
    FinetuneArguments,
    apply_size_defaults,
    config_record,
    evaluate_on_test,
    find_checkpoint,
    get_compute_metrics,
    get_data_collator,
    get_loss_function,
    parse_args,
    print_splits,
    push_folder,
    read_training_data,
    resolve_class_weights,
    reveal_tag_characters,
    save_model_and_test_split,
    summarize_run,
    tokenize_splits,
    write_model_card,
    write_validation_scores,
)

# Which linear layers get adapters, by model family (config.model_type).
DEFAULT_TARGET_MODULES = {
    "modernbert": ["attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo"],
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
}


@dataclass
class LoraArguments(FinetuneArguments):
    output_dir_suffix: ClassVar[str] = "-lora"

    learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak learning rate; LoRA wants a higher one than full fine-tuning (5e-5)."}
    )
    lora_r: int | None = field(
        default=None, metadata={"help": "Rank of the adapter matrices (default: the task's, 8; 32 for pii)."}
    )
    lora_alpha: int | None = field(
        default=None,
        metadata={"help": "LoRA scaling numerator, scale = alpha / r (default: the task's, 16; 64 for pii)."},
    )
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the adapter input."})
    target_modules: str | None = field(
        default=None,
        metadata={"help": f"Comma-separated module names to adapt (default by model type: {DEFAULT_TARGET_MODULES})."},
    )
    merge: bool = field(
        default=False, metadata={"help": "Also save OUTPUT_DIR/merged: adapter folded into the base weights."}
    )


def add_lora_adapters(model, task, args: LoraArguments):
    """Freeze the base model and insert trainable adapters; the new classifier head stays trainable."""
    from peft import LoraConfig, get_peft_model

    if args.target_modules:
        targets = [name.strip() for name in args.target_modules.split(",") if name.strip()]
    elif model.config.model_type in DEFAULT_TARGET_MODULES:
        targets = DEFAULT_TARGET_MODULES[model.config.model_type]
    else:
        raise UserError(f"no default LoRA targets for model type {model.config.model_type!r}; pass --target-modules.")
    lora = LoraConfig(
        task_type=KINDS[task.kind].peft_task_type,
        r=args.lora_r or task.lora_r,
        lora_alpha=args.lora_alpha or task.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
    )
    return get_peft_model(model, lora), targets


def main(argv=None) -> dict:
    started = time.perf_counter()

    # ---- config, data, split, tokenizer and base model: as in the full fine-tune ----
    data_args, training_args = parse_args(LoraArguments, argv, __doc__)
    task = get_task(data_args.task)
    training_args.lora_r = training_args.lora_r or task.lora_r  # the task's rank and alpha unless given
    training_args.lora_alpha = training_args.lora_alpha or task.lora_alpha
    print("config:", json.dumps(config_record(data_args, training_args), indent=2, default=str))
    hf_token = get_hf_token(data_args.env_file)
    frame, n_read = read_training_data(data_args, task, hf_token)
    print(f"data: {len(frame)} distinct texts ({n_read - len(frame)} repeats dropped) from {data_args.data}")
    splits = split_frame(frame, data_args.val_size, data_args.test_size, training_args.seed, task.split_group_column)
    print_splits(splits, task, training_args.seed)
    size_defaults = apply_size_defaults(training_args, len(splits["train"]))
    class_weights = resolve_class_weights(data_args.class_weights, splits["train"].get("label_id"), len(task.labels))
    set_seed(training_args.seed)  # before the model is built: the head and the adapters start from it
    source = resolve_model(data_args.model, hf_token)
    tokenizer = reveal_tag_characters(AutoTokenizer.from_pretrained(**source))
    tokenizer.model_max_length = data_args.max_length  # saved with the model, so pipeline() truncates there too
    base = task.model_class.from_pretrained(
        **source, num_labels=len(task.labels), id2label=task.id2label, label2id=task.label2id
    )

    # ---- LoRA: freeze the base, train adapters + classifier head ----
    model, targets = add_lora_adapters(base, task, training_args)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"LoRA on {targets}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")

    # ---- tokenize, then the same Trainer as the full fine-tune ----
    datasets = tokenize_splits(splits, tokenizer, data_args.max_length, task)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        processing_class=tokenizer,
        data_collator=get_data_collator(task, tokenizer),  # pads each batch to its own longest row
        compute_metrics=get_compute_metrics(task),
        compute_loss_func=get_loss_function(class_weights),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience)],
    )

    # ---- train, evaluate on the test split, save the adapter ----
    checkpoint = find_checkpoint(training_args)  # None unless --resume
    trainer.train(resume_from_checkpoint=checkpoint)
    test_metrics = evaluate_on_test(trainer, datasets["test"], splits["test"], task)
    out = save_model_and_test_split(trainer, splits["test"], task)
    write_validation_scores(trainer, datasets["validation"], splits["validation"], task)  # for step 4's threshold

    # ---- optionally fold the adapter into the base weights: a plain model that needs no peft ----
    extra = {"lora_target_modules": targets, "trainable_parameters": trainable, "total_parameters": total}
    extra |= {"size_defaults": size_defaults, "class_weights": class_weights}
    extra |= {"trainable_percent": 100 * trainable / total}
    extra["adapter_size_mb"] = (out / "adapter_model.safetensors").stat().st_size / 1e6
    if training_args.merge:  # the trainer holds the best epoch's adapters (load_best_model_at_end)
        trainer.model.merge_and_unload().save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
        extra["merged_dir"] = str(out / "merged")

    # ---- results and model card, written once everything LoRA adds is on disk ----
    results = summarize_run(trainer, data_args, training_args, test_metrics, splits, started, checkpoint, **extra)
    write_json(out / "all_results.json", results)
    write_model_card(trainer, task, data_args, results, adapter=True)
    print_metrics(test_metrics, f"{len(splits['test'])} held-out test rows")
    merged_note = f"; merged model in {out}/merged/" if training_args.merge else ""
    print(f"adapter {extra['adapter_size_mb']:.2f} MB{merged_note}; saved to {out}/ in {results['wall_time_s']:.0f} s")

    # ---- publish last: adapter, merged model, final results and card ----
    if data_args.push_to_hub:
        push_folder(out, training_args, data_args.env_file)
    return results


if __name__ == "__main__":
    run_cli(main)
