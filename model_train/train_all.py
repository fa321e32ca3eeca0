"""Train the whole classifier family: every task, full fine-tune and LoRA, then one summary table.

    uv run model_train/train_all.py
    uv run model_train/train_all.py --tasks intent jailbreak --methods full
    uv run model_train/train_all.py --model ./all-MiniLM-L6-v2 --data category=mmlu_pro_test.jsonl -- --epochs 3

Each run is its own subprocess (step 3, or lora/3_lora_finetune.py) with its log in
RUNS_DIR/TASK-METHOD.log, so one failure does not stop the others. Flags after `--` go to every run.
Writes RUNS_DIR/summary.json and RUNS_DIR/summary.md: per task and method the test accuracy and F1,
training time, trainable parameters, artifact size, and the model and hardware used.
"""

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import TASKS, UserError, get_parser, run_cli, write_json

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"full": REPO / "model_train" / "3_modern_bert_finetune.py", "lora": REPO / "lora" / "3_lora_finetune.py"}
WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors")


@dataclass
class TrainAllConfig:
    tasks: list[str] = field(
        default_factory=lambda: list(TASKS), metadata={"help": f"Tasks to train, from {list(TASKS)}.", "nargs": "+"}
    )
    methods: list[str] = field(
        default_factory=lambda: list(SCRIPTS), metadata={"help": "full and/or lora.", "nargs": "+"}
    )
    model: str = field(default="answerdotai/ModernBERT-base", metadata={"help": "Pretrained encoder for every run."})
    data: list[str] = field(
        default_factory=list,
        metadata={"help": "Per-task data, as TASK=FILE_OR_HUB_ID (default: each task's own).", "nargs": "*"},
    )
    runs_dir: str = field(default="runs", metadata={"help": "Each run saves to RUNS_DIR/TASK-METHOD/."})
    skip_finished: bool = field(
        default=False,
        metadata={
            "help": "Keep a run whose RUNS_DIR/TASK-METHOD/all_results.json exists instead of training it again "
            "(to continue an interrupted train_all)."
        },
    )

    def __post_init__(self):
        unknown = sorted(set(self.tasks) - set(TASKS)) + sorted(set(self.methods) - set(SCRIPTS))
        if unknown:
            raise UserError(f"unknown task or method {unknown}; tasks are {list(TASKS)}, methods {list(SCRIPTS)}.")
        if any("=" not in item for item in self.data):
            raise UserError("give --data as TASK=FILE_OR_HUB_ID, e.g. --data category=mmlu_pro_test.jsonl.")


def summary_row(task: str, method: str, out: Path, returncode: int, seconds: float) -> dict:
    """One line of the table, read from the run's all_results.json."""
    row = {"task": task, "method": method, "output_dir": str(out), "seconds": round(seconds)}
    results_file = out / "all_results.json"
    if returncode != 0 or not results_file.is_file():
        return row | {"status": f"failed (exit {returncode}); see {out}.log"}
    results = json.loads(results_file.read_text())
    test = results["test"]
    weights = next((out / name for name in WEIGHT_FILES if (out / name).is_file()), None)
    return row | {
        "status": "ok",
        "test_accuracy": test.get("accuracy"),  # a token task has entity scores, no accuracy
        "test_f1": test["weighted"]["f1"] if "weighted" in test else test["micro"]["f1"],
        "f1_kind": "weighted" if "weighted" in test else "exact-span entity, micro",
        "test_f1_macro": test["macro"]["f1"],
        "train_runtime_s": results["train_runtime_s"],
        "trainable_parameters": results["trainable_parameters"],
        "artifact_mb": weights.stat().st_size / 1e6 if weights else None,
        "model": results["model"],
        "device": results["run"]["device"],
    }


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| task | method | test accuracy | F1 (weighted; pii: exact-span entity) | macro F1 | train time (s) "
        "| trainable params | artifact (MB) "
        "| model | hardware |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["status"].startswith("ok"):
            lines.append(f"| {r['task']} | {r['method']} | {r['status']} | | | | | | | |")
            continue
        accuracy = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
        lines.append(
            f"| {r['task']} | {r['method']} | {accuracy} | {r['test_f1']:.4f} "
            f"| {r['test_f1_macro']:.4f} | {r['train_runtime_s']:.0f} | {r['trainable_parameters']:,} "
            f"| {r['artifact_mb']:.1f} | {r['model']} | {r['device']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    passed_on = argv[argv.index("--") + 1 :] if "--" in argv else []  # flags for every run
    own = argv[: argv.index("--")] if "--" in argv else argv
    (config,) = get_parser(TrainAllConfig, __doc__).parse_args_into_dataclasses(args=own)
    data = dict(item.split("=", 1) for item in config.data)
    runs_dir = Path(config.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)

    # ---- one subprocess per task and method, one after another; the summary is rewritten after each ----
    rows, started = [], time.perf_counter()
    plan = [(task, method) for task in config.tasks for method in config.methods]
    for i, (task, method) in enumerate(plan, 1):
        out = runs_dir / f"{task}-{method}"
        if config.skip_finished and (out / "all_results.json").is_file():
            print(f"[{i}/{len(plan)}] {task} {method}: finished before, kept ({out})", flush=True)
            rows.append(summary_row(task, method, out, 0, 0) | {"seconds": None, "status": "ok (kept)"})
        else:
            command = [sys.executable, str(SCRIPTS[method]), "--task", task, "--model", config.model]
            command += ["--output-dir", str(out)] + (["--data", data[task]] if task in data else []) + passed_on
            print(f"[{i}/{len(plan)}] {task} {method}: log in {out}.log", flush=True)
            run_started = time.perf_counter()
            with open(f"{out}.log", "w") as log:
                returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
            rows.append(summary_row(task, method, out, returncode, time.perf_counter() - run_started))
            print(f"  {rows[-1]['status']} in {rows[-1]['seconds']} s", flush=True)
        summary = {"rows": rows, "passed_on": passed_on, "wall_time_s": time.perf_counter() - started}
        write_json(runs_dir / "summary.json", summary)
        (runs_dir / "summary.md").write_text(markdown_table(rows))
    print("\n" + markdown_table(rows))
    failed = [f"{r['task']}-{r['method']}" for r in rows if not r["status"].startswith("ok")]
    if failed:
        print(f"{len(failed)} of {len(rows)} runs failed: {failed}; their logs say why.", file=sys.stderr)
    return summary


if __name__ == "__main__":
    run_cli(main)
