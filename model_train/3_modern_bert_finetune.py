"""Step 3: fully fine-tune ModernBERT-base as a guardrail that allows logistics questions and blocks the rest.

    uv run model_train/3_modern_bert_finetune.py
    uv run model_train/3_modern_bert_finetune.py --model ./ModernBERT-base   # offline, from a local copy

Reads data/dataset.xlsx (columns text, label), splits it into train / validation / test with a fixed
seed (near-identical texts never straddle splits), fine-tunes every weight, keeps the epoch with the
best validation F1, and saves to modernbert-llm-router/ a model that
`pipeline("text-classification", model="modernbert-llm-router")` loads, with:
  test_split.csv      the held-out rows, for inference/4_inference.py
  all_results.json    test metrics, resolved config, library versions, device, wall time
  training_curves.png loss and validation F1 per epoch
  README.md           the model card
"""

import json
import time

from common import (
    TASKS,
    TrainConfig,
    build_trainer,
    config_dict,
    evaluate_on_test,
    load_splits,
    load_tokenizer_and_model,
    parse_config,
    run_cli,
    save_run,
    to_datasets,
    train,
)


def main(argv=None) -> dict:
    config = parse_config(TrainConfig, argv, description=__doc__)
    started = time.perf_counter()
    print("config:", json.dumps(config_dict(config), indent=2))

    # ---- data: validate, split (stratified, grouped by normalised text), tokenize ----
    splits = load_splits(config)
    tokenizer, model = load_tokenizer_and_model(config)
    datasets = to_datasets(splits, tokenizer, config.max_length)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {config.model} ({n_params / 1e6:.1f}M parameters, all trained)")

    # ---- train: evaluate every epoch, keep the best by F1, stop early ----
    trainer = build_trainer(config, model, tokenizer, datasets)
    train(config, trainer)

    # ---- evaluate the best model on the held-out test split, then save everything ----
    test_metrics = evaluate_on_test(config, trainer, datasets, splits)
    results = save_run(config, trainer, splits, test_metrics, started, extra={"trainable_parameters": n_params})

    labels = TASKS[config.task].labels
    print(f"\ntest accuracy {test_metrics['accuracy']:.4f}  weighted F1 {test_metrics['weighted']['f1']:.4f}")
    for label in labels:
        m = test_metrics["per_class"][label]
        print(f"  {label:>6}: precision {m['precision']:.4f}  recall {m['recall']:.4f}  f1 {m['f1']:.4f}  n={m['support']}")
    print(f"saved to {config.output_dir}/ in {results['wall_time_s']:.0f} s")
    return results


if __name__ == "__main__": run_cli(main)
