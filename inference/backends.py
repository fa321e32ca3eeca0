"""What steps 4 and 5 share: loading a trained classifier, and running it through one of several
backends (PyTorch, ONNX Runtime fp32, ONNX Runtime int8) behind one call, with length-sorted batches
and honest timing.

It sits beside the scripts that use it; `uv run inference/4_inference.py` puts this folder first on
the import path, so `import backends` needs no path edits.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from common import Task, UserError, get_hf_token, resolve_model

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}  # inside MODEL/onnx/, written by step 5


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


class Classifier:
    """A tokenizer and a model behind one call: class probabilities for a list of texts.

    `run_logits` takes the tokenizer's numpy output (input_ids, attention_mask) and returns logits.
    Texts are sorted by length before batching, so a batch pads to a similar length instead of to its
    one long prompt; `padded_tokens` and `real_tokens` count what the last call computed.
    """

    def __init__(self, name: str, tokenizer, run_logits, max_length: int, sync=lambda: None):
        self.name, self.tokenizer, self.run_logits, self.max_length, self.sync = (
            name,
            tokenizer,
            run_logits,
            max_length,
            sync,
        )
        self.padded_tokens = self.real_tokens = 0

    def encode(self, texts: list[str]) -> dict:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="np")
        return {"input_ids": encoded["input_ids"].astype(np.int64), "attention_mask": encoded["attention_mask"]}

    def probabilities(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), 0))
        self.padded_tokens = self.real_tokens = 0
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = self.encode([texts[i] for i in rows])
            logits = np.asarray(self.run_logits(batch), dtype=np.float64)
            if out.shape[1] == 0:
                out = np.empty((len(texts), logits.shape[1]))
            out[rows] = softmax(logits)
            self.padded_tokens += batch["attention_mask"].size
            self.real_tokens += int(batch["attention_mask"].sum())
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def torch_classifier(tokenizer, model, device: str, max_length: int) -> Classifier:
    import torch

    def run_logits(batch):
        with torch.inference_mode():
            inputs = {name: torch.from_numpy(np.asarray(value)).to(device) for name, value in batch.items()}
            return model(**inputs).logits.float().cpu().numpy()

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    return Classifier("torch", tokenizer, run_logits, max_length, sync)


def onnx_classifier(model_dir: str | Path, backend: str, max_length: int | None = None) -> Classifier:
    """An ONNX Runtime session on MODEL/onnx/model.onnx (fp32) or model.int8.onnx, with its tokenizer."""
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer

    folder = Path(model_dir) / "onnx"
    path = folder / ONNX_FILES[backend]
    if not path.is_file():
        raise UserError(
            f"{str(path)!r} not found; export the model first: uv run inference/5_export_onnx.py --model {model_dir}"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same cores as the torch backend, for a fair race
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return Classifier(
        backend,
        tokenizer,
        lambda batch: session.run(["logits"], dict(batch))[0],
        max_length or tokenizer.model_max_length,
    )


def query_of_tokens(tokenizer, n_tokens: int) -> str:
    """A plain logistics query that the tokenizer turns into exactly n_tokens ids (special tokens included)."""
    words = [
        "where",
        "is",
        "my",
        "parcel",
        "it",
        "was",
        "sent",
        "from",
        "hamburg",
        "to",
        "lyon",
        "last",
        "week",
        "and",
        "the",
        "tracking",
        "has",
        "not",
        "moved",
    ]
    text = ""
    for i in range(10 * n_tokens):
        candidate = (text + " " + words[i % len(words)]).strip()
        if len(tokenizer(candidate)["input_ids"]) > n_tokens:
            break
        text = candidate
    if len(tokenizer(text)["input_ids"]) != n_tokens:
        raise ValueError(f"cannot build a query of exactly {n_tokens} tokens with this tokenizer")
    return text


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """This machine's measured fp32 matrix-multiply rate in torch, in GFLOP/s (best of `repeats`)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def compute_floor_ms(model, n_tokens: int, gflops: float) -> float:
    """The fp32 time one query of n_tokens cannot beat on this machine: 2 FLOPs per weight per token for
    every weight outside the embeddings (which are a lookup), at the measured matmul rate."""
    import torch

    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    weights = sum(p.numel() for p in model.parameters()) - embedding
    return 2 * weights * n_tokens / (gflops * 1e9) * 1000


def percentiles(latencies_ms: list[float]) -> dict:
    cuts = statistics.quantiles(latencies_ms, n=100)
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "mean": statistics.fmean(latencies_ms)}


def time_batch1(predict_one, texts: list[str], warmup_runs: int, timed_runs: int, sync=lambda: None) -> dict:
    """Batch-size-1 latency of predict_one(text) in ms: warm-up first, a device sync around each clock read."""
    for i in range(warmup_runs):
        predict_one(texts[i % len(texts)])
    latencies_ms = []
    for i in range(timed_runs):
        sync()
        start = time.perf_counter()
        predict_one(texts[i % len(texts)])
        sync()
        latencies_ms.append((time.perf_counter() - start) * 1000)
    return percentiles(latencies_ms)


def time_throughput(predict_many, texts: list[str], n_queries: int, sync=lambda: None) -> float:
    """Queries per second of predict_many(texts) over about n_queries queries (cycling through texts)."""
    batch = [texts[i % len(texts)] for i in range(n_queries)]
    predict_many(batch[: min(len(batch), 32)])  # warm-up
    sync()
    start = time.perf_counter()
    predict_many(batch)
    sync()
    return len(batch) / (time.perf_counter() - start)
