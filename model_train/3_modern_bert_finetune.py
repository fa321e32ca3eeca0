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

from common import TrainConfig, build_trainer, parse_config, prepare_run, run_cli, train_evaluate_save


def main(argv=None) -> dict:
    config = parse_config(TrainConfig, argv, description=__doc__)

    # ---- data (validate, split grouped by normalised text, tokenize) and the pretrained encoder ----
    run = prepare_run(config)
    n_params = sum(p.numel() for p in run.model.parameters())
    print(f"model: {config.model} ({n_params / 1e6:.1f}M parameters, all trained)")

    # ---- train every weight: evaluate each epoch, keep the best by F1, stop early ----
    trainer = build_trainer(config, run.model, run.tokenizer, run.datasets)

    # ---- score the best model on the held-out test split; save model, card and all_results.json ----
    return train_evaluate_save(run, trainer, extra={"trainable_parameters": n_params})


if __name__ == "__main__": run_cli(main)
