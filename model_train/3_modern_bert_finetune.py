"""Step 3: fully fine-tune ModernBERT-base as a guardrail that allows logistics questions and blocks the rest.

    uv run model_train/3_modern_bert_finetune.py
    uv run model_train/3_modern_bert_finetune.py --model ./ModernBERT-base   # offline, from a local copy
    uv run model_train/3_modern_bert_finetune.py --task category             # or jailbreak, intent

Reads data/dataset.xlsx (columns text, label), or the --task's data (a file or a hub dataset), drops
repeated texts, splits it into train / validation / test with a fixed seed (near-identical texts never
straddle splits), fine-tunes every weight with settings that suit the training split's size (flags
win), keeps the epoch with the best validation F1, and saves to modernbert-llm-router/ (or
models/TASK/) a model that `pipeline("text-classification", model="modernbert-llm-router")` loads, with:
  test_split.csv      the held-out rows, for inference/4_inference.py
  validation_scores.csv  the validation rows with the model's scores, for step 4's decision threshold
  all_results.json    test metrics, resolved config, library versions, device, wall time
  training_curves.png loss and validation F1 per epoch
  README.md           the model card
Every flag of transformers' TrainingArguments works too; --help lists them all.
"""

import json
import time

from transformers import AutoTokenizer, EarlyStoppingCallback, Trainer, set_seed

from common import (
    get_hf_token,
    get_task,
    print_metrics,
    resolve_model,
    run_cli,
    split_frame,
    write_json,
)
from model_train.training import (
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


def main(argv=None) -> dict:
    started = time.perf_counter()

    # ---- config: what to train on, and how (TrainingArguments with the blog's defaults) ----
    data_args, training_args = parse_args(argv=argv, description=__doc__)
    task = get_task(data_args.task)
    print("config:", json.dumps(config_record(data_args, training_args), indent=2, default=str))

    # ---- data: a labelled file or hub dataset (a span file for pii); check it; drop repeated texts ----
    hf_token = get_hf_token(data_args.env_file)
    frame, n_read = read_training_data(data_args, task, hf_token)
    print(f"data: {len(frame)} distinct texts ({n_read - len(frame)} repeats dropped) from {data_args.data}")

    # ---- split: train / validation / test, stratified; near-identical texts (or one template) share a split ----
    splits = split_frame(frame, data_args.val_size, data_args.test_size, training_args.seed, task.split_group_column)
    print_splits(splits, task, training_args.seed)

    # ---- settings that follow the training split's size (unless given as flags), and class weights ----
    size_defaults = apply_size_defaults(training_args, len(splits["train"]))
    class_weights = resolve_class_weights(data_args.class_weights, splits["train"].get("label_id"), len(task.labels))
    if class_weights:
        print(f"class weights in the loss: {dict(zip(task.labels, [round(w, 3) for w in class_weights], strict=True))}")

    # ---- tokenizer and pretrained encoder, with a new classification head for the task's labels ----
    set_seed(training_args.seed)  # before the model is built: the new head's initial weights come from it
    source = resolve_model(data_args.model, hf_token)
    tokenizer = reveal_tag_characters(AutoTokenizer.from_pretrained(**source))
    tokenizer.model_max_length = data_args.max_length  # saved with the model, so pipeline() truncates there too
    model = task.model_class.from_pretrained(
        **source, num_labels=len(task.labels), id2label=task.id2label, label2id=task.label2id
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {data_args.model} ({n_params / 1e6:.1f}M parameters, all trained)")

    # ---- tokenize: truncate to --max-length; padding happens per batch ----
    datasets = tokenize_splits(splits, tokenizer, data_args.max_length, task)

    # ---- Trainer: evaluate every epoch, keep the best epoch by the task's metric, stop early ----
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

    # ---- train (or continue an interrupted run with --resume, from its newest complete checkpoint) ----
    checkpoint = find_checkpoint(training_args)  # None unless --resume
    trainer.train(resume_from_checkpoint=checkpoint)

    # ---- evaluate the best model on the held-out test split ----
    test_metrics = evaluate_on_test(trainer, datasets["test"], splits["test"], task)

    # ---- save: model, tokenizer, test_split.csv, training curves, all_results.json, model card ----
    # (the epoch checkpoints go once the best model is saved: their optimizer states are large)
    out = save_model_and_test_split(trainer, splits["test"], task)
    write_validation_scores(trainer, datasets["validation"], splits["validation"], task)  # for step 4's threshold
    results = summarize_run(
        trainer,
        data_args,
        training_args,
        test_metrics,
        splits,
        started,
        checkpoint,
        trainable_parameters=n_params,
        size_defaults=size_defaults,
        class_weights=class_weights,
    )
    write_json(out / "all_results.json", results)
    write_model_card(trainer, task, data_args, results)
    print_metrics(test_metrics, f"{len(splits['test'])} held-out test rows")
    print(f"saved to {out}/ in {results['wall_time_s']:.0f} s")

    # ---- publish last, once everything above is on disk ----
    if data_args.push_to_hub:
        push_folder(out, training_args, data_args.env_file)
    return results


if __name__ == "__main__":
    run_cli(main)
