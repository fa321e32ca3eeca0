"""Step 4: evaluate a fine-tuned guardrail (or any task's classifier) and benchmark its latency.

    uv run inference/4_inference.py                                  # modernbert-llm-router/ on its test split
    uv run inference/4_inference.py --model DIR --data other.xlsx    # any model directory, any labelled file
    uv run inference/4_inference.py --text "Where is my parcel?"     # classify one query
    uv run inference/4_inference.py --backend onnx-int8              # the model exported by step 5
    uv run inference/4_inference.py --compare-backends               # time every backend, one after another
    uv run inference/4_inference.py --task category --model models/category --data FILE
    uv run inference/4_inference.py --task pii --model models/pii --text "Call Anna Berg on +46 70 123 45 67" --mask

Writes, next to the model: inference_results.json (metrics, accuracy per category group, latency,
device, versions) and misclassified.csv; and images/confusion_matrix.png. --compare-backends also
writes backend_comparison.json.

Latency is measured the way a server sees it: tokenize + forward for one query at a time
(batch size 1), after warm-up runs, with a device sync before each clock read on GPU, over many
runs, reported as p50/p95/p99. Throughput is queries per second in batches, sorted by length so
that padding does not dominate.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from backends import (
    BACKENDS,
    compute_floor_ms,
    load_trained_classifier,
    matmul_gflops,
    onnx_classifier,
    pick_device,
    query_of_tokens,
    time_batch1,
    time_throughput,
    torch_classifier,
)
from threshold import choose_threshold, detection_metrics, load_threshold, plot_curves, rates, save_threshold

from common import (
    ENV_FILE_HELP,
    LONE_SURROGATE,
    TASKS,
    UserError,
    classification_metrics,
    get_hf_token,
    get_run_info,
    get_task,
    group_accuracy,
    load_data,
    parse_config,
    print_metrics,
    read_table,
    run_cli,
    validate_frame,
    write_json,
)
from model_train.spans import mask_text, predict_entities, read_span_file, score_entities

LLM_CALL_MS = 1000  # the blog's figure for one LLM API round trip, for scale; not measured here


@dataclass
class InferenceConfig:
    task: str = field(default="guardrail", metadata={"help": f"Task the model was trained for: {list(TASKS)}."})
    model: str = field(
        default="modernbert-llm-router",
        metadata={"help": "Fine-tuned model, merged model or LoRA adapter directory (or hub id)."},
    )
    data: str | None = field(
        default=None,
        metadata={"help": "Labelled file or Hugging Face dataset id to evaluate (default: MODEL/test_split.csv)."},
    )
    data_split: str = field(default="test", metadata={"help": "Split to read when --data is a hub dataset."})
    text: str | None = field(default=None, metadata={"help": "Classify this one query and stop."})
    mask: bool = field(
        default=False, metadata={"help": "pii, with --text: print the text with each entity replaced by [TYPE]."}
    )
    text_column: str | None = field(default=None, metadata={"help": "Column holding the text (default: the task's)."})
    label_column: str | None = field(default=None, metadata={"help": "Column holding the label (default: the task's)."})
    max_length: int | None = field(
        default=None,
        metadata={"help": "Truncate queries to this many tokens (default: the length the model was trained for)."},
    )
    batch_size: int = field(default=32, metadata={"help": "Batch size for evaluation and for the throughput run."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu or cuda (torch backend)."})
    backend: str = field(
        default="torch",
        metadata={
            "help": "torch, or onnx / onnx-int8 (exported by inference/5_export_onnx.py).",
            "choices": list(BACKENDS),
        },
    )
    max_false_allow: float | None = field(
        default=None,
        metadata={
            "help": "Choose the decision threshold on MODEL/validation_scores.csv so that at most this share of "
            "blocked-class rows is allowed (e.g. 0.01), save it to MODEL/threshold.json and use it."
        },
    )
    max_false_block: float | None = field(
        default=None, metadata={"help": "Or choose it for at most this share of allowed-class rows blocked."}
    )
    use_threshold: bool = field(
        default=True,
        metadata={"help": "Decide with MODEL/threshold.json when it exists (--no-use-threshold: plain argmax)."},
    )
    compare_backends: bool = field(
        default=False,
        metadata={"help": "Time the transformers pipeline and every available backend in this one process."},
    )
    benchmark: bool = field(default=True, metadata={"help": "Run the latency benchmark (--no-benchmark to skip)."})
    warmup_runs: int = field(default=10, metadata={"help": "Untimed batch-size-1 runs before timing."})
    timed_runs: int = field(default=200, metadata={"help": "Timed batch-size-1 runs (queries cycle through the data)."})
    throughput_batches: int = field(default=10, metadata={"help": "Timed batches for the throughput figure."})
    images_dir: str = field(default="images", metadata={"help": "Where confusion_matrix.png is written."})
    env_file: str = field(default=".env", metadata={"help": ENV_FILE_HELP})

    def __post_init__(self):
        task = get_task(self.task)
        self.text_column = self.text_column or task.text_column
        self.label_column = self.label_column or task.label_column
        for name in ("batch_size", "timed_runs", "throughput_batches"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1.")
        if self.max_false_allow is not None and self.max_false_block is not None:
            raise UserError("give --max-false-allow or --max-false-block, not both.")
        for name in ("max_false_allow", "max_false_block"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} is a rate: give a number from 0 to below 1.")
        if self.text is not None and LONE_SURROGATE.search(self.text):
            raise UserError("--text holds bytes that are not valid UTF-8; pass the query as UTF-8 text.")


def printable(text: str) -> str:
    """The text with control, format and line-break characters escaped, so that it cannot forge an output
    line or send terminal escapes: a newline prints as backslash-n, ESC as backslash-x1b."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def plot_confusion_matrix(y_true, y_pred, labels, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    path.parent.mkdir(parents=True, exist_ok=True)
    side = max(5.0, 0.55 * len(labels) + 2)  # 14 classes get a 10-inch square, so every count stays legible
    figure, axes = plt.subplots(figsize=(side, side))
    display = ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(labels))),
        display_labels=list(labels),
        cmap="Blues",
        colorbar=False,
        ax=axes,
        xticks_rotation=45 if len(labels) > 4 else "horizontal",
    )
    display.ax_.set(title=title, xlabel="predicted", ylabel="true")
    display.figure_.tight_layout()
    display.figure_.savefig(path, dpi=120)
    plt.close(display.figure_)


def get_threshold(config: InferenceConfig, task) -> dict | None:
    """The decision threshold: chosen now on the validation scores if a target is given, else the one
    saved with the model, else None (argmax)."""
    if config.max_false_allow is None and config.max_false_block is None:
        return load_threshold(config.model) if config.use_threshold else None
    if task.threshold_label is None:
        raise UserError(f"task {task.name!r} has no class to threshold; drop --max-false-allow / --max-false-block.")
    path = Path(config.model) / "validation_scores.csv"
    if not path.is_file():
        raise UserError(f"{str(path)!r} not found; step 3 writes it (retrain, or pass no threshold target).")
    validation = read_table(path)
    scores = validation[f"score_{task.threshold_label}"].to_numpy()
    allowed = validation["label"].astype(str).to_numpy() == task.threshold_label
    value = choose_threshold(scores, allowed, config.max_false_allow, config.max_false_block)
    record = {
        "label": task.threshold_label,
        "threshold": value,
        "chosen_on": str(path),
        "target": {"max_false_allow": config.max_false_allow, "max_false_block": config.max_false_block},
        "validation": {"n": len(validation), **rates(scores, allowed, value)},
    }
    image = Path(config.images_dir) / "threshold_curves.png"
    plot_curves(scores, allowed, value, image, f"{Path(config.model).name}, validation split")
    save_threshold(config.model, record)
    print(
        f"threshold {value:.4f} on P({task.threshold_label!r}), chosen on {len(validation)} validation rows: "
        f"{record['validation']}"
    )
    print(f"  saved to {Path(config.model) / 'threshold.json'}; precision-recall and ROC curves -> {image}")
    return record


def decide(probabilities, task, threshold: dict | None):
    """Class ids: argmax, or for a thresholded task the allow class exactly when its probability reaches
    the threshold."""
    if threshold is None:
        return probabilities.argmax(axis=1)
    allow_id = task.label2id[threshold["label"]]
    block_id = 1 - allow_id
    return np.where(probabilities[:, allow_id] >= threshold["threshold"], allow_id, block_id)


def load_classifier(config: InferenceConfig, task, backend: str, device: str):
    """The trained model behind `backend`, as a backends.Classifier (plus the torch model, for the pipeline)."""
    if backend == "torch":
        tokenizer, model = load_trained_classifier(config.model, task, device, config.env_file)
        max_length = config.max_length or min(tokenizer.model_max_length, 8192)  # step 3 saves its --max-length
        return torch_classifier(tokenizer, model, device, max_length), model
    return onnx_classifier(config.model, backend, config.max_length), None


def time_calls(one, many, tokenizer, texts: list[str], config: InferenceConfig, sync=lambda: None) -> dict:
    """Batch-1 latency of one(text) on the real queries and on fixed 16- and 32-token ones, and the
    throughput of many(texts)."""
    runs = (config.warmup_runs, config.timed_runs)
    latency = {"batch1_ms": time_batch1(one, texts, *runs, sync)}
    for n in (16, 32):
        latency[f"batch1_ms_{n}_tokens"] = time_batch1(one, [query_of_tokens(tokenizer, n)], *runs, sync)
    latency["throughput_qps"] = time_throughput(many, texts, config.batch_size * config.throughput_batches, sync)
    return latency


def benchmark(classifier, texts: list[str], config: InferenceConfig) -> dict:
    """The timings of a backend, with its batches sorted by length."""
    latency = time_calls(
        lambda text: classifier.probabilities([text], 1),
        lambda batch: classifier.probabilities(batch, config.batch_size),
        classifier.tokenizer,
        texts,
        config,
        classifier.sync,
    )
    latency["throughput_batch_size"] = config.batch_size
    latency["padded_tokens"], latency["real_tokens"] = classifier.padded_tokens, classifier.real_tokens
    return latency


def benchmark_pipeline(
    model, tokenizer, max_length: int, texts: list[str], config: InferenceConfig, device: str
) -> dict:
    """The same timings for transformers' pipeline(), the baseline every backend is compared with."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, device=device)
    options = {"truncation": True, "max_length": max_length}
    return time_calls(
        lambda text: pipe(text, **options),
        lambda batch: pipe(batch, batch_size=config.batch_size, **options),
        tokenizer,
        texts,
        config,
    )


def compare_backends(config, task, texts, labels, device, report_dir: Path) -> dict:
    """Time the pipeline and every backend that is available, one after another on the same queries."""
    torch_backend, model = load_classifier(config, task, "torch", device)
    rows = {
        "transformers pipeline": benchmark_pipeline(
            model, torch_backend.tokenizer, torch_backend.max_length, texts, config, device
        )
    }
    for backend in BACKENDS:
        try:
            classifier = torch_backend if backend == "torch" else load_classifier(config, task, backend, device)[0]
        except UserError as missing:
            print(f"skipping {backend}: {missing}")
            continue
        rows[backend] = benchmark(classifier, texts, config)
        rows[backend]["accuracy"] = float(
            (classifier.probabilities(texts, config.batch_size).argmax(1) == labels).mean()
        )
    base = rows["transformers pipeline"]
    for row in rows.values():
        row["speedup_16_tokens"] = base["batch1_ms_16_tokens"]["p50"] / row["batch1_ms_16_tokens"]["p50"]
        row["throughput_ratio"] = row["throughput_qps"] / base["throughput_qps"]
        row["vs_llm_call"] = LLM_CALL_MS / row["batch1_ms_16_tokens"]["p50"]
    gflops = matmul_gflops()
    floor = {"matmul_gflops_fp32": gflops, "ms_16_tokens": compute_floor_ms(model, 16, gflops)}
    comparison = {
        "model": config.model,
        "compute_floor_fp32": floor,
        "n_queries": len(texts),
        "backends": rows,
        "run": get_run_info(("torch", "transformers", "onnxruntime")),
    }
    write_json(report_dir / "backend_comparison.json", comparison)
    print(f"\nbackends on {comparison['run']['device']} ({len(texts)} test queries, batch {config.batch_size}):")
    print(
        f"compute floor (fp32): {floor['ms_16_tokens']:.1f} ms for 16 tokens at this machine's measured "
        f"{gflops:.0f} GFLOP/s matrix-multiply rate"
    )
    print(
        "| backend | p50 real (ms) | p95 real | p99 real | p50 16 tok | p50 32 tok | queries/s | accuracy "
        "| vs pipeline, 16 tok | vs pipeline, q/s | vs an LLM call (~1,000 ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        real = row["batch1_ms"]
        accuracy = f"{row['accuracy']:.4f}" if "accuracy" in row else "-"
        print(
            f"| {name} | {real['p50']:.1f} | {real['p95']:.1f} | {real['p99']:.1f} "
            f"| {row['batch1_ms_16_tokens']['p50']:.1f} "
            f"| {row['batch1_ms_32_tokens']['p50']:.1f} | {row['throughput_qps']:.0f} | {accuracy} "
            f"| {row['speedup_16_tokens']:.1f}x | {row['throughput_ratio']:.1f}x | {row['vs_llm_call']:.0f}x |"
        )
    return comparison


def find_entities(config: InferenceConfig, task, device: str) -> dict:
    """Step 4 for a token task (pii): the entities of --text (or the text masked), or exact-span scores on a
    span file, with misses and false alarms written out, and the latency benchmark."""
    if config.backend != "torch":
        raise UserError(f"task {task.name!r} runs on the torch backend only; drop --backend {config.backend}.")
    tokenizer, model = load_trained_classifier(config.model, task, device, config.env_file)
    max_length = config.max_length or min(tokenizer.model_max_length, 8192)

    def predict(texts):
        return predict_entities(model, tokenizer, texts, max_length, task.id2label, config.batch_size)

    # ---- one query: its entities, or the text with each one masked ----
    if config.text is not None:
        entities = predict([config.text])[0]
        if config.mask:
            print(printable(mask_text(config.text, entities)))
        for e in [] if config.mask else entities:
            print(f"{e['label']}\t{e['score']:.4f}\t{e['start']}-{e['end']}\t{printable(e['text'])}")
        return {"text": config.text, "entities": entities, "masked": mask_text(config.text, entities)}

    # ---- a span file: exact-span scores per type, and seqeval on the tag sequences ----
    data_path = config.data or str(Path(config.model) / "test_split.jsonl")
    frame = read_span_file(data_path, task.entity_types)
    texts, gold = frame["text"].tolist(), frame["spans"].tolist()
    metrics, predicted = score_entities(model, tokenizer, texts, gold, max_length, task, config.batch_size)

    # ---- what it got wrong, with the text ----
    report_dir = Path(config.model) if Path(config.model).is_dir() else Path(".")
    errors = []
    for text, true_row, predicted_row in zip(texts, gold, predicted, strict=True):
        true_keys = {(s["start"], s["end"], s["label"]) for s in true_row}
        predicted_keys = {(e["start"], e["end"], e["label"]) for e in predicted_row}
        missed = [
            {**s, "text": text[s["start"] : s["end"]]}
            for s in true_row
            if (s["start"], s["end"], s["label"]) not in predicted_keys
        ]
        false_alarms = [e for e in predicted_row if (e["start"], e["end"], e["label"]) not in true_keys]
        if missed or false_alarms:
            errors.append({"text": text, "missed": missed, "false_alarms": false_alarms})
    errors_path = report_dir / "span_errors.jsonl"
    errors_path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors), encoding="utf-8")

    results = {"model": config.model, "task": task.name, "data": data_path, "n": len(frame), "metrics": metrics}
    if config.benchmark:
        results["latency"] = time_calls(lambda text: predict([text]), predict, tokenizer, texts, config)
    results["run"] = get_run_info()
    write_json(report_dir / "inference_results.json", results)

    # ---- report ----
    print_metrics(metrics, f"{len(frame)} texts from {data_path}")
    print(f"  seqeval (strict IOB2) F1 {metrics['seqeval']['f1']:.4f}")
    print(f"  {len(errors)} texts with misses or false alarms -> {errors_path}")
    if config.benchmark:
        lat = results["latency"]
        print(
            f"latency on {results['run']['device']}: batch 1 p50 {lat['batch1_ms']['p50']:.1f} ms, "
            f"p95 {lat['batch1_ms']['p95']:.1f} ms; batch {config.batch_size}: {lat['throughput_qps']:.0f} texts/s"
        )
    return results


def main(argv=None) -> dict:
    config = parse_config(InferenceConfig, argv, description=__doc__)
    task = get_task(config.task)
    device = pick_device(config.device)
    if task.kind == "token":
        return find_entities(config, task, device)
    classifier, _ = load_classifier(config, task, config.backend, device)
    id2label = task.id2label
    threshold = get_threshold(config, task)

    # ---- one query ----
    if config.text is not None:
        probs = classifier.probabilities([config.text], 1)
        label = id2label[int(decide(probs, task, threshold)[0])]
        print(f"{label}\t{probs[0].max():.4f}\t{printable(config.text)}")
        return {"text": config.text, "label": label, "score": float(probs[0].max()), "threshold": threshold}

    # ---- example queries ----
    examples = list(task.examples)
    if examples:
        print(f"example queries ({config.backend}):")
        probabilities = classifier.probabilities(examples, 8)
        for text, probs, decided in zip(examples, probabilities, decide(probabilities, task, threshold), strict=True):
            print(f"  {id2label[int(decided)]:>5} {probs.max():.3f}  {text}")

    # ---- evaluate on a labelled file ----
    data_path = config.data or str(Path(config.model) / "test_split.csv")
    if config.data is None and not Path(data_path).is_file():
        raise UserError(f"{config.model!r} has no test_split.csv; pass --data with a labelled file to evaluate on.")
    table = load_data(data_path, config.data_split, get_hf_token(config.env_file))
    frame = validate_frame(table, task, config.text_column, config.label_column, every_class=False)
    texts = frame["text"].tolist()
    probs = classifier.probabilities(texts, config.batch_size)  # batches sorted by length
    tokens = {"padded": classifier.padded_tokens, "real": classifier.real_tokens}
    predicted = decide(probs, task, threshold)
    metrics = classification_metrics(frame["label_id"], predicted, task.labels)
    if threshold is not None:
        allowed = frame["label_id"].to_numpy() == task.label2id[threshold["label"]]
        scores = probs[:, task.label2id[threshold["label"]]]
        metrics["threshold"] = {"value": threshold["threshold"], **rates(scores, allowed, threshold["threshold"])}
    positive = frame["label_id"].to_numpy() == task.label2id.get(task.positive_label, -1)
    if task.positive_label and 0 < positive.sum() < len(frame):  # a detector, on a file with both classes
        metrics["detection"] = detection_metrics(probs[:, task.label2id[task.positive_label]], positive)
    correct = pd.Series(predicted == frame["label_id"].to_numpy())
    if task.group_column in frame.columns:
        metrics["by_group"] = group_accuracy(frame[task.group_column], correct)

    report_dir = Path(config.model) if Path(config.model).is_dir() else Path(".")
    misclassified = frame.assign(predicted=[task.labels[i] for i in predicted], score=probs.max(axis=1))
    misclassified[~correct.to_numpy()].drop(columns=["label_id"]).to_csv(report_dir / "misclassified.csv", index=False)
    image = Path(config.images_dir) / "confusion_matrix.png"
    plot_confusion_matrix(
        frame["label_id"], predicted, task.labels, image, f"{Path(config.model).name} on {Path(data_path).name}"
    )

    results = {
        "model": config.model,
        "backend": config.backend,
        "data": data_path,
        "n": len(frame),
        "metrics": metrics,
        "tokens": tokens,
        "confusion_matrix_png": str(image),
    }
    if config.benchmark:
        results["latency"] = benchmark(classifier, texts, config)
    results["run"] = get_run_info()
    write_json(report_dir / "inference_results.json", results)

    # ---- report ----
    print_metrics(metrics, f"{len(frame)} rows from {data_path}")
    if "detection" in metrics:
        at = metrics["detection"]["recall_at_fpr_0.01"]
        print(
            f"  ROC AUC {metrics['detection']['roc_auc']:.4f}; recall of {task.positive_label!r} "
            f"{at['recall']:.4f} with {at['false_positive_rate']:.2%} of the rest flagged"
        )
    if threshold is not None:
        print(f"  at threshold {threshold['threshold']:.4f}: {metrics['threshold']}")
    print(
        f"  {int((~correct).sum())} misclassified rows -> {report_dir / 'misclassified.csv'}; "
        f"confusion matrix -> {image}"
    )
    print(f"  {tokens['real']} real tokens in {tokens['padded']} padded ones (batches sorted by length)")
    if config.benchmark:
        lat = results["latency"]
        print(
            f"latency ({config.backend}) on {results['run']['device']}: batch 1 p50 {lat['batch1_ms']['p50']:.1f} ms, "
            f"p95 {lat['batch1_ms']['p95']:.1f} ms, p99 {lat['batch1_ms']['p99']:.1f} ms; "
            f"batch {config.batch_size}: {lat['throughput_qps']:.0f} queries/s"
        )

    # ---- every backend side by side ----
    if config.compare_backends:
        results["comparison"] = compare_backends(config, task, texts, frame["label_id"].to_numpy(), device, report_dir)
    return results


if __name__ == "__main__":
    run_cli(main)
