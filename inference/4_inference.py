"""Step 4: evaluate a fine-tuned guardrail and benchmark its latency.

    uv run inference/4_inference.py                                  # modernbert-llm-router/ on its test split
    uv run inference/4_inference.py --model DIR --data other.xlsx    # any model directory, any labelled file
    uv run inference/4_inference.py --text "Where is my parcel?"     # classify one query

Writes, next to the model: inference_results.json (metrics, accuracy per category group, latency,
device, versions) and misclassified.csv; and images/confusion_matrix.png.

Latency is measured the way a server sees it: tokenize + forward for one query at a time
(batch size 1), after warm-up runs, with a device sync before each clock read on GPU, over many
runs, reported as p50/p95/p99. Throughput is queries per second in batches.
"""

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from common import (
    ENV_FILE_HELP,
    LONE_SURROGATE,
    TASKS,
    Task,
    UserError,
    classification_metrics,
    get_hf_token,
    get_run_info,
    get_task,
    group_accuracy,
    parse_config,
    print_metrics,
    read_table,
    resolve_model,
    run_cli,
    validate_frame,
    write_json,
)


@dataclass
class InferenceConfig:
    task: str = field(default="guardrail", metadata={"help": f"Task the model was trained for: {list(TASKS)}."})
    model: str = field(
        default="modernbert-llm-router",
        metadata={"help": "Fine-tuned model, merged model or LoRA adapter directory (or hub id)."},
    )
    data: str | None = field(
        default=None, metadata={"help": "Labelled file to evaluate (default: MODEL/test_split.csv)."}
    )
    text: str | None = field(default=None, metadata={"help": "Classify this one query and stop."})
    text_column: str | None = field(default=None, metadata={"help": "Column holding the text (default: the task's)."})
    label_column: str | None = field(default=None, metadata={"help": "Column holding the label (default: the task's)."})
    max_length: int | None = field(
        default=None,
        metadata={"help": "Truncate queries to this many tokens (default: the length the model was trained for)."},
    )
    batch_size: int = field(default=32, metadata={"help": "Batch size for evaluation and for the throughput run."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu or cuda."})
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
        if self.text is not None and LONE_SURROGATE.search(self.text):
            raise UserError("--text holds bytes that are not valid UTF-8; pass the query as UTF-8 text.")


def load_trained_classifier(name_or_path: str, task: Task, device: str = "cpu", env_file: str | Path = ".env"):
    """Tokenizer and eval-mode classifier from a full/merged model or a LoRA adapter directory.

    An adapter directory (it has adapter_config.json) is applied to its base model, rebuilt with
    the task's labels, so predictions carry the task's label names rather than LABEL_0, LABEL_1.
    """
    from transformers import AutoTokenizer

    token = get_hf_token(env_file)
    if not Path(name_or_path, "adapter_config.json").is_file():
        source = resolve_model(name_or_path, token)
        tokenizer = AutoTokenizer.from_pretrained(**source)
        model = task.model_class.from_pretrained(**source)
    else:
        from peft import PeftConfig, PeftModel

        base = resolve_model(PeftConfig.from_pretrained(name_or_path).base_model_name_or_path, token)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = task.model_class.from_pretrained(
            **base, num_labels=len(task.labels), id2label=task.id2label, label2id=task.label2id
        )
        model = PeftModel.from_pretrained(model, name_or_path)
    return tokenizer, model.to(device).eval()


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {choice} but torch sees no CUDA GPU here; use --device cpu or auto.")
    if choice != "cpu" and not choice.startswith("cuda"):
        raise UserError(f"--device {choice!r} is not one of auto, cpu, cuda.")
    return choice


def printable(text: str) -> str:
    """The text with control, format and line-break characters escaped, so that it cannot forge an output
    line or send terminal escapes: a newline prints as backslash-n, ESC as backslash-x1b."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def predict(texts: list[str], tokenizer, model, device: str, batch_size: int, max_length: int):
    """Class probabilities for each text, shape (len(texts), n_classes)."""
    import torch

    probabilities = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = model(**batch.to(device)).logits
            probabilities.append(torch.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(probabilities).numpy()


def plot_confusion_matrix(y_true, y_pred, labels, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    path.parent.mkdir(parents=True, exist_ok=True)
    display = ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(labels))), display_labels=list(labels), cmap="Blues", colorbar=False
    )
    display.ax_.set(title=title, xlabel="predicted", ylabel="true")
    display.figure_.tight_layout()
    display.figure_.savefig(path, dpi=120)
    plt.close(display.figure_)


def benchmark(texts: list[str], tokenizer, model, device: str, config: InferenceConfig) -> dict:
    """Batch-size-1 latency percentiles and batched throughput, after warm-up."""
    import torch

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def run_one(text):
        batch = tokenizer([text], truncation=True, max_length=config.max_length, return_tensors="pt").to(device)
        model(**batch)

    latencies_ms = []
    with torch.inference_mode():
        for i in range(config.warmup_runs):
            run_one(texts[i % len(texts)])
        for i in range(config.timed_runs):
            sync()
            start = time.perf_counter()
            run_one(texts[i % len(texts)])
            sync()
            latencies_ms.append((time.perf_counter() - start) * 1000)
        batches = [
            texts[(i * config.batch_size) % len(texts) :][: config.batch_size] for i in range(config.throughput_batches)
        ]
        sync()
        start = time.perf_counter()
        for batch in batches:
            predict(batch, tokenizer, model, device, config.batch_size, config.max_length)
        sync()
        elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(latencies_ms, n=100)
    return {
        "batch1_ms": {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "mean": statistics.fmean(latencies_ms)},
        "timed_runs": config.timed_runs,
        "warmup_runs": config.warmup_runs,
        "throughput_qps": sum(len(b) for b in batches) / elapsed,
        "throughput_batch_size": config.batch_size,
        "mean_tokens_per_query": statistics.fmean(
            len(tokenizer(t, truncation=True, max_length=config.max_length)["input_ids"]) for t in texts
        ),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None) -> dict:
    config = parse_config(InferenceConfig, argv, description=__doc__)
    task = get_task(config.task)
    device = pick_device(config.device)
    tokenizer, model = load_trained_classifier(config.model, task, device, config.env_file)
    id2label = model.config.id2label
    config.max_length = config.max_length or min(tokenizer.model_max_length, 8192)  # step 3 saves its --max-length

    # ---- one query ----
    if config.text is not None:
        probs = predict([config.text], tokenizer, model, device, 1, config.max_length)[0]
        label = id2label[int(probs.argmax())]
        print(f"{label}\t{probs.max():.4f}\t{printable(config.text)}")
        return {"text": config.text, "label": label, "score": float(probs.max())}

    # ---- example queries ----
    examples = list(task.examples)
    if examples:
        print("example queries:")
        for text, probs in zip(
            examples, predict(examples, tokenizer, model, device, 8, config.max_length), strict=True
        ):
            print(f"  {id2label[int(probs.argmax())]:>5} {probs.max():.3f}  {text}")

    # ---- evaluate on a labelled file ----
    data_path = config.data or str(Path(config.model) / "test_split.csv")
    if config.data is None and not Path(data_path).is_file():
        raise UserError(f"{config.model!r} has no test_split.csv; pass --data with a labelled file to evaluate on.")
    frame = validate_frame(read_table(data_path), task, config.text_column, config.label_column, every_class=False)
    texts = frame["text"].tolist()
    probs = predict(texts, tokenizer, model, device, config.batch_size, config.max_length)
    predicted = probs.argmax(axis=1)
    metrics = classification_metrics(frame["label_id"], predicted, task.labels)
    correct = pd.Series(predicted == frame["label_id"].to_numpy())
    if task.group_column in frame.columns:
        metrics["by_group"] = group_accuracy(frame[task.group_column], correct)

    report_dir = Path(config.model) if Path(config.model).is_dir() else Path(".")
    misclassified = frame.assign(predicted=[task.labels[i] for i in predicted], score=probs.max(axis=1))[
        ~correct.to_numpy()
    ]
    misclassified.drop(columns=["label_id"]).to_csv(report_dir / "misclassified.csv", index=False)
    image = Path(config.images_dir) / "confusion_matrix.png"
    plot_confusion_matrix(
        frame["label_id"], predicted, task.labels, image, f"{Path(config.model).name} on {Path(data_path).name}"
    )

    results = {
        "model": config.model,
        "data": data_path,
        "n": len(frame),
        "metrics": metrics,
        "confusion_matrix_png": str(image),
    }
    if config.benchmark:
        results["latency"] = benchmark(texts, tokenizer, model, device, config)
    results["run"] = get_run_info()
    write_json(report_dir / "inference_results.json", results)

    # ---- report ----
    print_metrics(metrics, f"{len(frame)} rows from {data_path}")
    print(
        f"  {len(misclassified)} misclassified rows -> {report_dir / 'misclassified.csv'}; confusion matrix -> {image}"
    )
    if config.benchmark:
        lat = results["latency"]
        print(
            f"latency on {results['run']['device']}: batch 1 p50 {lat['batch1_ms']['p50']:.1f} ms, "
            f"p95 {lat['batch1_ms']['p95']:.1f} ms, p99 {lat['batch1_ms']['p99']:.1f} ms; "
            f"batch {config.batch_size}: {lat['throughput_qps']:.0f} queries/s"
        )
    return results


if __name__ == "__main__":
    run_cli(main)
