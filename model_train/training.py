"""Fine-tuning helpers shared by step 3 (model_train/3_modern_bert_finetune.py) and its LoRA variant
(lora/3_lora_finetune.py). The story itself (split, model, Trainer, train, evaluate, save, publish)
stays in those scripts; each helper here does one job that its name says.

This is an installed module (pyproject.toml lists the package `model_train`) rather than a sibling
file, because lora/ imports it too: `uv sync` makes `from model_train.training import ...` work from
every folder without path edits.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import pandas as pd
from transformers import TrainingArguments

from common import (
    ENV_FILE_HELP,
    KINDS,
    TASKS,
    Task,
    UserError,
    classification_metrics,
    drop_duplicate_texts,
    get_hf_token,
    get_parser,
    get_run_info,
    get_task,
    group_accuracy,
    load_data,
    validate_frame,
)
from model_train.spans import read_span_file, score_entities, seqeval_scores, tag_sequences, tokenize_with_labels

# ---------------------------------------------------------------------------
# Config: what to train on (a small dataclass) and how (TrainingArguments with the blog's defaults).
# ---------------------------------------------------------------------------


@dataclass
class ModelDataArguments:
    """The task, the pretrained encoder and the data. Empty fields take the task's defaults."""

    task: str = field(default="guardrail", metadata={"help": f"Which classifier to train: {list(TASKS)}."})
    model: str = field(
        default="answerdotai/ModernBERT-base", metadata={"help": "Hub id or local directory of the pretrained encoder."}
    )
    data: str | None = field(
        default=None,
        metadata={"help": "Labelled .xlsx/.csv/.jsonl/.parquet file or Hugging Face dataset id (default: the task's)."},
    )
    data_split: str | None = field(
        default=None, metadata={"help": "Split to read when --data is a hub dataset (default: the task's)."}
    )
    text_column: str | None = field(default=None, metadata={"help": "Column holding the text (default: the task's)."})
    label_column: str | None = field(default=None, metadata={"help": "Column holding the label (default: the task's)."})
    max_length: int = field(default=512, metadata={"help": "Truncate queries to this many tokens."})
    class_weights: str | None = field(
        default=None,
        metadata={
            "help": "Loss weight per class: none, balanced (n_rows / (n_classes * rows of the class), counted on "
            "the training split) or one number per class in label order, e.g. 1,3 (default: the task's)."
        },
    )
    val_size: float = field(default=0.1, metadata={"help": "Fraction of distinct texts held out for validation."})
    test_size: float = field(default=0.1, metadata={"help": "Fraction of distinct texts held out for the test split."})
    env_file: str = field(default=".env", metadata={"help": ENV_FILE_HELP})
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "Publish the output folder to the hub as the very last step, once the model, results and card "
            "are written (needs hf_token; the repo is --hub_model_id, default the output folder's name)."
        },
    )

    def __post_init__(self):
        task = get_task(self.task)
        self.data = self.data or task.default_data
        self.data_split = self.data_split or task.data_split
        self.class_weights = self.class_weights or task.class_weights
        self.text_column = self.text_column or task.text_column
        self.label_column = self.label_column or task.label_column


@dataclass
class FinetuneArguments(TrainingArguments):
    """transformers' TrainingArguments with the blog's defaults and this project's short flag names."""

    output_dir_suffix: ClassVar[str] = ""  # appended to the task's default output folder

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the model is saved. Empty: the task's folder, modernbert-llm-router (LoRA adds -lora)."
        },
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (AdamW)."})
    num_train_epochs: float = field(
        default=5,
        metadata={"help": "Maximum training epochs (early stopping may end sooner).", "aliases": ["--epochs"]},
    )
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "Training batch size per device.", "aliases": ["--batch_size", "--batch-size"]}
    )
    per_device_eval_batch_size: int = field(
        default=64,
        metadata={"help": "Evaluation batch size per device.", "aliases": ["--eval_batch_size", "--eval-batch-size"]},
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: float = field(
        default=0.1,
        metadata={
            "help": "Linear warm-up: a fraction of all steps if below 1 (0.1 = the first tenth), else a step count.",
            "aliases": ["--warmup_ratio", "--warmup-ratio"],
        },
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "Evaluate on the validation split every epoch."})
    save_strategy: str = field(default="epoch", metadata={"help": "Checkpoint every epoch, so --resume can continue."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep the best and the newest checkpoint."})
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "End with the epoch that scored best on the task's metric."}
    )
    logging_steps: float = field(default=25, metadata={"help": "Log the training loss every N steps."})
    bf16: str = field(
        default="auto",
        metadata={
            "help": "bf16 mixed precision: auto (on a GPU that supports it), yes or no.",
            "choices": ["auto", "yes", "no"],
        },
    )
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "Batch training queries of similar length together, so a few long prompts do not pad "
            "every batch (--no-group-by-length for plain random batches)."
        },
    )
    early_stopping_patience: int = field(
        default=2, metadata={"help": "Stop after this many epochs without a better validation score."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue an interrupted run from its last epoch checkpoint."}
    )
    # The Trainer never pushes by itself (it would push checkpoints mid-run); the script publishes
    # once, last: see --push_to_hub.
    push_to_hub: bool = field(default=False, init=False)
    # The fields the command line set, filled by parse_args; size-adaptive defaults leave them alone.
    given_flags: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self):
        import torch

        for name, flag in (
            ("per_device_train_batch_size", "batch-size"),
            ("per_device_eval_batch_size", "eval-batch-size"),
        ):
            if getattr(self, name) < 1:
                raise UserError(f"--{flag} must be at least 1.")
        if not self.learning_rate > 0:
            raise UserError(f"--learning-rate must be above 0 (got {self.learning_rate}).")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise UserError("--epochs must be above 0 (or give --max-steps): 0 epochs would train nothing.")
        self.bf16 = use_bf16(self.bf16)
        if self.group_by_length and self.train_sampling_strategy == "random":
            self.train_sampling_strategy = "group_by_length"
        self.dataloader_pin_memory = self.dataloader_pin_memory and torch.cuda.is_available()  # host-to-GPU only
        try:
            super().__post_init__()
        except ValueError as error:  # TrainingArguments' own checks (a negative warm-up, clashing strategies)
            raise UserError(" ".join(str(error).split()).rstrip(".") + "; fix the flag and run again.") from error


def use_bf16(choice: str | bool) -> bool:
    import torch

    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if choice in ("yes", True) and not supported:
        raise UserError("--bf16 yes needs a GPU with bf16 support; use --bf16 auto or no.")
    return choice in ("yes", True) or (choice == "auto" and supported)


def parse_args(training_class=FinetuneArguments, argv=None, description: str | None = None):
    """(ModelDataArguments, training arguments) from the command line.

    The task fills in what the flags leave out: the output folder and the metric that picks the best
    epoch (and, in ModelDataArguments, the data file and its columns). The training arguments remember
    which fields the command line set (`given_flags`), so that size-adaptive defaults never override them.
    """
    parser = get_parser((ModelDataArguments, training_class), description)
    flags = parser.parse_args(argv)
    task = get_task(flags.task)
    flags.output_dir = flags.output_dir or task.default_output_dir + training_class.output_dir_suffix
    flags.metric_for_best_model = flags.metric_for_best_model or task.metric_for_best_model
    data_args, training_args = (
        cls(**{f.name: getattr(flags, f.name) for f in fields(cls) if f.init}) for cls in parser.dataclass_types
    )
    training_args.given_flags = given_flags(parser, argv)
    return data_args, training_args


def given_flags(parser, argv) -> set[str]:
    """The fields set on the command line, whatever spelling was used (an alias, --no_x, an abbreviation):
    parsing again with every default suppressed leaves exactly those in the namespace."""
    import argparse

    for action in parser._actions:
        action.default = argparse.SUPPRESS
    parser._defaults.clear()
    namespace, _ = parser.parse_known_args(argv)
    return set(vars(namespace))


# Training defaults by the size of the training split, as the Semantic Router's trainers choose them:
# a small set gets more epochs over smaller batches and a gentler learning rate, with more patience
# before early stopping; from 5,000 rows on, the blog's settings. The learning rate is a multiple of
# the script's own default (5e-5 for the full fine-tune, 1e-3 for LoRA). Evaluation and checkpoints
# happen every epoch at every size. A flag given on the command line always wins; nothing is capped.
SIZE_DEFAULTS = (
    (
        "under 1,000 rows",
        1_000,
        {
            "num_train_epochs": 10,
            "per_device_train_batch_size": 16,
            "learning_rate": 0.6,
            "weight_decay": 0.01,
            "warmup_steps": 0.1,
            "early_stopping_patience": 3,
        },
    ),
    (
        "1,000 to 4,999 rows",
        5_000,
        {
            "num_train_epochs": 8,
            "per_device_train_batch_size": 16,
            "learning_rate": 1.0,
            "weight_decay": 0.01,
            "warmup_steps": 0.1,
            "early_stopping_patience": 2,
        },
    ),
    (
        "5,000 rows or more",
        None,
        {
            "num_train_epochs": 5,
            "per_device_train_batch_size": 32,
            "learning_rate": 1.0,
            "weight_decay": 0.01,
            "warmup_steps": 0.1,
            "early_stopping_patience": 2,
        },
    ),
)


def apply_size_defaults(training_args: FinetuneArguments, n_train: int) -> dict:
    """Set the size-adaptive defaults that no flag gave; return what was resolved, and from where."""
    bucket, _, defaults = next(row for row in SIZE_DEFAULTS if row[1] is None or n_train < row[1])
    given = getattr(training_args, "given_flags", set())
    script_default = {f.name: f.default for f in fields(type(training_args))}["learning_rate"]
    defaults = {**defaults, "learning_rate": defaults["learning_rate"] * script_default}
    for name, value in defaults.items():
        if name not in given:
            setattr(training_args, name, value)
    resolved = {name: getattr(training_args, name) for name in defaults}
    record = {"train_rows": n_train, "size": bucket, "values": resolved, "from_flags": sorted(given & set(defaults))}
    print(f"training settings for {n_train} training rows ({bucket}): {resolved}")
    if record["from_flags"]:
        print(f"  given on the command line, so kept: {record['from_flags']}")
    return record


def config_record(data_args: ModelDataArguments, training_args: TrainingArguments) -> dict:
    """Every setting of the run, flat, for the log and all_results.json (tokens are masked by to_dict)."""
    return {**asdict(data_args), **training_args.to_dict()}


# ---------------------------------------------------------------------------
# Data and tokenizer.
# ---------------------------------------------------------------------------


def read_training_data(data_args: ModelDataArguments, task: Task, token: str | None) -> tuple[pd.DataFrame, int]:
    """The rows to train on, with repeated texts dropped, and how many rows were read: a labelled table
    (a file or hub dataset) for a sequence task, a span file for a token task."""
    if task.kind == "token":
        table = read_span_file(data_args.data, task.entity_types)
        return drop_duplicate_texts(table), len(table)
    table = load_data(data_args.data, data_args.data_split, token)
    frame = validate_frame(table, task, data_args.text_column, data_args.label_column)
    return drop_duplicate_texts(frame), len(table)


def print_splits(splits: dict[str, pd.DataFrame], task: Task, seed: int) -> None:
    """Label balance per split (entities and templates, for a token task) and three random training rows."""
    for name, part in splits.items():
        if "label_id" in part.columns:
            counts = part["label_id"].map(task.id2label).value_counts().to_dict()
        else:
            counts = {"entities": int(part["spans"].map(len).sum()), "templates": part["template_id"].nunique()}
        print(f"  {name:<10} {len(part):>5} rows  {counts}")
    for _, row in splits["train"].sample(3, random_state=seed).iterrows():
        label = task.id2label[row.label_id] if "label_id" in row else [s["label"] for s in row.spans]
        print(f"  sample: {label} {row.text[:100]!r}")


def reveal_tag_characters(tokenizer):
    """A copy of the tokenizer that reads invisible Unicode tag characters as the ASCII they encode.

    Tag characters (U+E0020-U+E007E) mirror printable ASCII and render as nothing, so an attacker can
    hide "ignore your rules" after a genuine question. BERT-style tokenizers delete them and
    byte-level BPE turns each into four opaque bytes; either way the model cannot read the payload.
    The rule lives in the tokenizer's normalizer, so it is saved in tokenizer.json and applies
    wherever the model is loaded, pipeline() included. The copy is a generic fast tokenizer because
    model-specific tokenizer classes rebuild their own normalizer on load.
    """
    import copy

    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast

    if not getattr(tokenizer, "is_fast", False):
        return tokenizer
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    rules = [normalizers.Replace(chr(0xE0000 + code), chr(code)) for code in range(0x20, 0x7F)]
    backend.normalizer = normalizers.Sequence(rules + ([backend.normalizer] if backend.normalizer else []))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=tokenizer.model_max_length,
        model_input_names=tokenizer.model_input_names,
        padding_side=tokenizer.padding_side,
        **tokenizer.special_tokens_map,
    )


def tokenize_splits(splits: dict[str, pd.DataFrame], tokenizer, max_length: int, task: Task):
    """A DatasetDict of token ids and labels per split; padding happens per batch in the collator.
    A token task's labels are one BIO tag per token, aligned by character offsets (model_train/spans.py)."""
    from datasets import Dataset, DatasetDict

    if task.kind == "token":
        return DatasetDict(
            {
                name: Dataset.from_dict(
                    dict(
                        tokenize_with_labels(
                            tokenizer, part["text"].tolist(), part["spans"].tolist(), max_length, task.label2id
                        )
                    )
                )
                for name, part in splits.items()
            }
        )

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    for name, part in splits.items():
        # One token past the limit is enough to tell which queries get cut.
        ids = tokenizer(part["text"].tolist(), truncation=True, max_length=max_length + 1)["input_ids"]
        cut = sum(len(row) > max_length for row in ids)
        if cut:
            print(
                f"  {name}: {cut} of {len(ids)} queries are longer than --max-length {max_length} tokens "
                "and are truncated"
            )
    return DatasetDict(
        {
            name: Dataset.from_dict({"text": part["text"].tolist(), "labels": part["label_id"].tolist()}).map(
                tokenize, batched=True, remove_columns=["text"], desc=f"tokenize {name}"
            )
            for name, part in splits.items()
        }
    )


# ---------------------------------------------------------------------------
# What the Trainer is given: the collator, metrics per epoch and, for tasks with class weights, the loss.
# ---------------------------------------------------------------------------


def get_data_collator(task: Task, tokenizer):
    """The task kind's collator: it pads each batch to its own longest row (dynamic padding)."""
    import transformers

    return getattr(transformers, KINDS[task.kind].data_collator)(tokenizer)


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The scalars the Trainer logs: accuracy and weighted/macro precision, recall, F1."""
    flat = {"accuracy": metrics["accuracy"], "f1": metrics["weighted"]["f1"], "f1_macro": metrics["macro"]["f1"]}
    flat["precision"] = metrics["weighted"]["precision"]
    flat["recall"] = metrics["weighted"]["recall"]
    return flat


def get_compute_metrics(task: Task):
    """compute_metrics for the Trainer: accuracy and weighted/macro precision, recall and F1; for a token
    task, entity-level precision, recall and F1 (seqeval, strict IOB2), so the best epoch is picked by
    entities found, not by token accuracy."""
    import numpy as np

    if task.kind == "token":

        def entity_metrics(prediction):
            predicted = np.argmax(prediction.predictions, axis=-1)
            return seqeval_scores(*tag_sequences(prediction.label_ids, predicted, task.id2label))

        return entity_metrics

    def compute_metrics(prediction):
        predicted = np.argmax(prediction.predictions, axis=-1)
        return flat_metrics(classification_metrics(prediction.label_ids, predicted, task.labels))

    return compute_metrics


def resolve_class_weights(spec: str, train_label_ids, n_classes: int) -> tuple[float, ...] | None:
    """--class-weights as numbers: None for "none"; for "balanced", n_rows / (n_classes * rows of the class)
    counted on the training split (scikit-learn's rule); else the comma-separated numbers as given."""
    import numpy as np

    if spec == "none":
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(train_label_ids), minlength=n_classes)
        if (counts == 0).any():
            raise UserError("--class-weights balanced needs training rows of every class.")
        return tuple(float(w) for w in len(train_label_ids) / (n_classes * counts))
    try:
        weights = tuple(float(w) for w in spec.split(","))
    except ValueError:
        weights = ()
    if len(weights) != n_classes or not all(w > 0 for w in weights):
        raise UserError(
            f"--class-weights {spec!r}: give none, balanced, or {n_classes} positive numbers separated by commas."
        )
    return weights


def get_loss_function(class_weights: tuple[float, ...] | None):
    """compute_loss_func for the Trainer: cross-entropy weighted per class; None (the model's own loss)
    without class weights."""
    if class_weights is None:
        return None
    import torch

    weights = torch.tensor(class_weights, dtype=torch.float)

    def weighted_cross_entropy(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        return torch.nn.functional.cross_entropy(
            logits.view(-1, logits.shape[-1]).float(), labels.view(-1), weight=weights.to(logits.device)
        )

    return weighted_cross_entropy


# ---------------------------------------------------------------------------
# Train, evaluate, save, publish.
# ---------------------------------------------------------------------------


def is_complete_checkpoint(folder: Path) -> bool:
    """The Trainer writes trainer_state.json last, after the weights, optimizer and RNG states; a folder
    without a readable one was cut off mid-write (a kill during saving)."""
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return any((folder / name).is_file() for name in ("model.safetensors", "adapter_model.safetensors"))


def find_checkpoint(training_args: FinetuneArguments) -> str | None:
    """The checkpoint to resume from with --resume: the newest complete one. Without --resume, refuse to
    silently overwrite an unfinished run."""
    out = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint:  # an explicit folder, as in transformers' own scripts
        if not is_complete_checkpoint(Path(training_args.resume_from_checkpoint)):
            raise UserError(f"{training_args.resume_from_checkpoint!r} is not a complete checkpoint folder.")
        return training_args.resume_from_checkpoint
    folders = sorted(
        out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]) if p.name[11:].isdigit() else -1
    )
    if folders and not training_args.resume:
        raise UserError(
            f"{str(out)!r} holds an unfinished run ({folders[-1].name}); "
            f"add --resume to continue it or choose another --output-dir."
        )
    if not training_args.resume:
        return None
    complete = [folder for folder in folders if is_complete_checkpoint(folder)]
    if not complete:
        raise UserError(f"--resume found no complete checkpoint in {str(out)!r}; run without --resume to start fresh.")
    for torn in folders[folders.index(complete[-1]) + 1 :]:
        print(f"skipping {torn.name}: incomplete (cut off while it was written); removing it")
        shutil.rmtree(torn)
    print(f"resuming from {complete[-1].name}")
    return str(complete[-1])


def predict_split(trainer, dataset, frame: pd.DataFrame):
    """Class probabilities of the trainer's model for each row of a split, in the split's own row order."""
    import numpy as np
    import torch

    output = trainer.predict(dataset)
    # With length-grouped batching the Trainer also visits evaluation rows in length order; its
    # batch sampler says which row each prediction belongs to, so predictions line up with the split again.
    order = np.array([i for batch in trainer.get_test_dataloader(dataset).batch_sampler for i in batch])
    assert (output.label_ids == frame["label_id"].to_numpy()[order]).all(), "predictions are out of line with the split"
    probabilities = np.empty(output.predictions.shape)
    probabilities[order] = torch.softmax(torch.from_numpy(output.predictions).float(), dim=-1).numpy()
    return probabilities


def evaluate_on_test(trainer, test_dataset, test: pd.DataFrame, task: Task) -> dict:
    """Test metrics of the trainer's (best) model, plus accuracy per group when the task has groups. For a
    token task: exact-span scores of the decoded entities, and seqeval's on the tag sequences."""
    if task.kind == "token":
        tokenizer = trainer.processing_class
        texts, gold = test["text"].tolist(), test["spans"].tolist()
        return score_entities(trainer.model, tokenizer, texts, gold, tokenizer.model_max_length, task)[0]
    labels = test["label_id"].to_numpy()
    predicted = predict_split(trainer, test_dataset, test).argmax(axis=1)
    metrics = classification_metrics(labels, predicted, task.labels)
    if task.group_column in test.columns:
        metrics["by_group"] = group_accuracy(test[task.group_column], pd.Series(predicted == labels))
    return metrics


def save_model_and_test_split(trainer, test: pd.DataFrame, task: Task) -> Path:
    """The best model and its tokenizer, test_split.csv for step 4 and training_curves.png; checkpoints go."""
    out = Path(trainer.args.output_dir)
    trainer.save_model(str(out))  # also saves the tokenizer (processing_class)
    if task.kind == "token":  # spans are lists: JSON Lines in our span format, which step 4 reads back
        test[["text", "spans", "template_id"]].to_json(out / "test_split.jsonl", orient="records", lines=True)
    else:
        test.drop(columns=["label_id"]).assign(label=test["label_id"].map(task.id2label)).to_csv(
            out / "test_split.csv", index=False
        )
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # the best weights are saved above; optimizer states are GBs
    plot_training_curves(trainer.state.log_history, trainer.args.metric_for_best_model, out / "training_curves.png")
    return out


def write_validation_scores(trainer, validation_dataset, validation: pd.DataFrame, task: Task) -> None:
    """validation_scores.csv: each validation row with the model's probability per class, from which
    step 4 picks a decision threshold (never from the test split, which stays for reporting). Only a
    task with a class to threshold needs it."""
    if task.threshold_label is None:
        return
    probabilities = predict_split(trainer, validation_dataset, validation)
    scores = validation[["text"]].assign(label=validation["label_id"].map(task.id2label))
    for i, label in task.id2label.items():
        scores[f"score_{label}"] = probabilities[:, i]
    scores.to_csv(Path(trainer.args.output_dir) / "validation_scores.csv", index=False)


def plot_training_curves(log_history: list[dict], metric: str, path: str | Path) -> None:
    """Training loss per step and validation loss / metric per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["epoch"], e["loss"]) for e in log_history if "loss" in e]
    evals = [(e["epoch"], e["eval_loss"], e[f"eval_{metric}"]) for e in log_history if f"eval_{metric}" in e]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        epochs, losses, scores = zip(*evals, strict=True)
        ax_loss.plot(epochs, losses, "o-", label="validation loss")
        ax_metric.plot(epochs, scores, "o-", color="tab:green")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax_loss.legend()
    ax_metric.set(xlabel="epoch", ylabel=metric, title=f"Validation {metric}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize_run(
    trainer, data_args, training_args, test_metrics, splits, started: float, resumed_from: str | None, **extra
) -> dict:
    """The content of all_results.json: test metrics, split sizes, timing, the whole config and the run.

    After --resume the timings are the finishing process's only, and `timing_covers` says so.
    """
    timing = f"the process that resumed from {Path(resumed_from).name}" if resumed_from else "the whole run"
    return {
        "task": data_args.task,
        "model": data_args.model,
        "test": test_metrics,
        "best_validation_f1": trainer.state.best_metric,  # the score named by metric_for_best_model
        "metric_for_best_model": training_args.metric_for_best_model,
        "epochs_trained": trainer.state.epoch,
        "split_sizes": {name: len(part) for name, part in splits.items()},
        "train_runtime_s": next((e["train_runtime"] for e in trainer.state.log_history if "train_runtime" in e), None),
        "wall_time_s": time.perf_counter() - started,
        "timing_covers": timing,
        "config": config_record(data_args, training_args),
        **extra,
        "run": get_run_info(),
    }


def write_model_card(trainer, task: Task, data_args, results: dict, adapter: bool = False) -> None:
    """The Trainer's card (hyperparameters, training log) plus what the task is, usage and test results.

    An adapter directory carries its base model's config, whose labels are LABEL_0, LABEL_1, ...; its
    snippet passes the task's labels to pipeline() so that predictions carry the real names.
    """
    out = Path(trainer.args.output_dir)
    # Log entries restored from a checkpoint come back with sorted keys, fresh ones in logging order; the
    # card's table takes its columns from the first row, so one key order for all keeps columns in line.
    trainer.state.log_history = [dict(sorted(entry.items())) for entry in trainer.state.log_history]
    trainer.create_model_card(
        model_name=out.name, finetuned_from=data_args.model, tasks=KINDS[task.kind].pipeline_tag, license="apache-2.0"
    )
    test = results["test"]
    rows = "\n".join(
        f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |"
        for name, m in test["per_class"].items()
    )
    model_id = trainer.args.hub_model_id or str(out)
    labels = f', model_kwargs={{"id2label": {task.id2label}, "label2id": {task.label2id}}}' if adapter else ""
    example = (task.examples or ("Where is my parcel?",))[0]
    if "micro" in test:  # a token task: entities scored on exact character spans
        headline = (
            f"Exact-span entity scores: precision {test['micro']['precision']:.4f}, recall "
            f"{test['micro']['recall']:.4f}, F1 {test['micro']['f1']:.4f} (seqeval, strict IOB2: F1 "
            f"{test['seqeval']['f1']:.4f}). Templates never straddle splits."
        )
    else:
        headline = f"Accuracy {test['accuracy']:.4f}, weighted F1 {test['weighted']['f1']:.4f}."
    card = out / "README.md"
    card.write_text(
        card.read_text()
        + f"""
{task.description}

## How to use

```python
from transformers import pipeline

classifier = pipeline("{KINDS[task.kind].pipeline_tag}", model="{model_id}"{labels}{KINDS[task.kind].pipeline_kwargs})
classifier({example!r}{KINDS[task.kind].call_kwargs})
```

Labels: {", ".join(f'`"{label}"` (id {i})' for i, label in task.id2label.items())}.

## Test results

Held-out test split of `{data_args.data}` ({results["split_sizes"]["test"]} rows; near-identical texts never
straddle splits). {headline}

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Measured on {results["run"]["device"]} with transformers {results["run"]["versions"]["transformers"]}.
Wall time {results["wall_time_s"]:.0f} s ({results["timing_covers"]}).

## Limitations

{task.limitations}
"""
    )


def push_folder(folder: str | Path, training_args: TrainingArguments, env_file: str | Path) -> None:
    """Upload a finished output folder (model, tokenizer, card, results) to the hub: the repo
    --hub_model_id (default: the folder's name), private with --hub_private_repo, token --hub_token
    or hf_token."""
    token = training_args.hub_token or get_hf_token(env_file)
    if not token:
        raise UserError("--push-to-hub needs a token: set hf_token in .env (see .env.example).")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = training_args.hub_model_id or Path(folder).name
    repo = api.create_repo(repo_id, private=training_args.hub_private_repo, exist_ok=True)
    api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), commit_message="Upload fine-tuned classifier")
    print(f"pushed to https://huggingface.co/{repo.repo_id}")
