"""The classifier family: category, jailbreak and intent as registry entries, trained by the same step 3
(and LoRA), read from files in each source's own schema or from a hub id, and trained all at once."""

import json
import time

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, load_script
from transformers import pipeline

from common import MMLU_PRO_DOMAINS, TASKS, UserError, load_data, normalize_text, validate_frame
from model_train.training import FinetuneArguments, apply_size_defaults, parse_args, resolve_class_weights

# ---- size-adaptive settings and class weights ----


def test_size_defaults_follow_the_training_split_and_every_given_flag_wins():
    _, args = parse_args(FinetuneArguments, ["--task", "intent", "--epochs", "3", "--learning_rate", "1e-4"])
    record = apply_size_defaults(args, 800)
    assert (args.num_train_epochs, args.learning_rate) == (3, 1e-4)  # given: kept, not capped
    assert args.per_device_train_batch_size == 16 and args.early_stopping_patience == 3  # under 1,000 rows
    assert record["from_flags"] == ["learning_rate", "num_train_epochs"] and record["size"] == "under 1,000 rows"

    _, args = parse_args(FinetuneArguments, ["--batch-size", "8"])  # an alias counts as given too
    apply_size_defaults(args, 20_000)
    assert (args.per_device_train_batch_size, args.num_train_epochs, args.learning_rate) == (8, 5, 5e-5)
    _, args = parse_args(FinetuneArguments, [])
    apply_size_defaults(args, 2_000)
    assert (args.num_train_epochs, args.per_device_train_batch_size) == (8, 16)


def test_lora_size_defaults_scale_its_own_learning_rate():
    lora = load_script("lora/3_lora_finetune.py")
    _, args = parse_args(lora.LoraArguments, [])
    apply_size_defaults(args, 500)
    assert args.learning_rate == pytest.approx(0.6 * 1e-3)


def test_balanced_class_weights_by_hand():
    # 4 rows, 2 classes: n / (k * count) = 4 / (2 * 3) and 4 / (2 * 1)
    assert resolve_class_weights("balanced", [0, 0, 0, 1], 2) == pytest.approx((2 / 3, 2.0))
    assert resolve_class_weights("1,3", [0, 1], 2) == (1.0, 3.0)
    assert resolve_class_weights("none", [0, 1], 2) is None
    with pytest.raises(UserError, match="2 positive numbers"):
        resolve_class_weights("3", [0, 1], 2)
    assert TASKS["jailbreak"].class_weights == "balanced"


# ---- data: files in each source's schema, hub ids ----


def mmlu_pro_rows(per_category: int, repeats: int) -> pd.DataFrame:
    """Rows in MMLU-Pro's own columns; the first `repeats` questions appear twice, as the hub's do."""
    rows = []
    for domain in MMLU_PRO_DOMAINS:
        for i in range(per_category):
            rows.append(
                {
                    "question_id": len(rows),
                    "question": f"In {domain}, exam question {i}: which statement about topic {i * 7 % 13} holds?",
                    "options": ["A", "B", "C", "D"],
                    "answer": "A",
                    "answer_index": 0,
                    "cot_content": "",
                    "category": domain,
                    "src": f"ori_mmlu-{domain}",
                }
            )
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(rows[:repeats])], ignore_index=True)


def test_a_hub_id_offline_fails_within_seconds_in_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(UserError, match="pass --data data.jsonl") as error:
        load_data("TIGER-Lab/MMLU-Pro", "test")
    assert time.perf_counter() - started < 10 and "load_dataset('TIGER-Lab/MMLU-Pro', split='test')" in str(error.value)


def test_a_hub_id_without_network_fails_in_one_sentence(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "dataset_info", unreachable)
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub"):
        load_data("someone/some-dataset", "train")


def test_files_of_every_format_read_the_same(tmp_path):
    frame = mmlu_pro_rows(1, 0)
    frame.to_parquet(tmp_path / "m.parquet")
    frame.to_json(tmp_path / "m.jsonl", orient="records", lines=True)
    for name in ("m.parquet", "m.jsonl"):
        read = validate_frame(load_data(str(tmp_path / name)), TASKS["category"], "question", "category")
        assert read["label_id"].tolist() == list(range(14))


def test_a_text_and_label_file_works_for_a_task_with_other_columns():
    frame = pd.DataFrame({"text": ["what is 2+2", "explain gravity"], "label": ["math", "physics"]})
    checked = validate_frame(frame, TASKS["category"], "question", "category")
    assert checked["label_id"].tolist() == [MMLU_PRO_DOMAINS.index("math"), MMLU_PRO_DOMAINS.index("physics")]


def test_shipped_family_data_has_the_tasks_labels_and_keeps_the_challenge_sets_apart():
    for task, train, challenge in (
        ("intent", "intent.xlsx", "intent_challenge.xlsx"),
        ("jailbreak", "jailbreak.xlsx", "jailbreak_challenge.xlsx"),
    ):
        rows = validate_frame(pd.read_excel(ROOT / "data" / train, keep_default_na=False), TASKS[task], "text", "label")
        held = pd.read_excel(ROOT / "data" / challenge, keep_default_na=False)
        assert set(held["label"]) == set(TASKS[task].labels)
        assert not set(rows["text"].map(normalize_text)) & set(held["text"].map(normalize_text))
        if task == "intent":
            assert rows["label"].value_counts().min() >= 250  # the floor per intent


def test_jailbreak_data_is_derived_by_the_policy(tmp_path):
    build = load_script("data_process/make_jailbreak_dataset.py")
    assert build.jailbreak_label("attack/role_play") == "jailbreak"
    assert build.jailbreak_label("attack/harmful_logistics") == "benign"  # harmful, but no manipulation
    assert build.jailbreak_label("off_topic/creative_writing") == "benign"  # "write a poem" is benign here
    assert build.jailbreak_label("attack/data_exfiltration") is None
    summary = build.main(["--output", str(tmp_path / "jailbreak.xlsx")])
    shipped = pd.read_excel(ROOT / "data" / "jailbreak.xlsx", keep_default_na=False)
    rebuilt = pd.read_excel(tmp_path / "jailbreak.xlsx", keep_default_na=False)
    assert summary["rows"] == len(shipped) and rebuilt["text"].tolist() == shipped["text"].tolist()


# ---- training every task through the same step 3, and loading it with pipeline() ----


@pytest.fixture(scope="module")
def family_data(tmp_path_factory) -> dict[str, str]:
    """A small file per task, each in its source's own columns."""
    folder = tmp_path_factory.mktemp("family")
    mmlu_pro_rows(12, repeats=10).to_json(folder / "mmlu_pro.jsonl", orient="records", lines=True)
    files = {"category": str(folder / "mmlu_pro.jsonl")}
    for task, name in (("jailbreak", "jailbreak.xlsx"), ("intent", "intent.xlsx")):
        rows = pd.read_excel(ROOT / "data" / name, keep_default_na=False)
        rows.groupby("label", group_keys=False).sample(12, random_state=0).to_csv(folder / f"{task}.csv", index=False)
        files[task] = str(folder / f"{task}.csv")
    return files


@pytest.mark.parametrize("task", ["category", "jailbreak", "intent"])
def test_each_task_trains_and_loads_with_pipeline_under_its_own_labels(task, family_data, tiny_modernbert, tmp_path):
    finetune = load_script("model_train/3_modern_bert_finetune.py")
    out = tmp_path / task
    argv = ["--task", task, "--model", str(tiny_modernbert), "--data", family_data[task], "--output-dir", str(out)]
    results = finetune.main(argv + ["--max-steps", "2", "--max-length", "64"])

    classify = pipeline("text-classification", model=str(out), top_k=None)
    assert sorted(score["label"] for score in classify(["hello there"])[0]) == sorted(TASKS[task].labels)
    assert results["size_defaults"]["size"] == "under 1,000 rows"
    if task == "category":  # 10 repeated questions dropped before the split, none straddling splits
        assert sum(results["split_sizes"].values()) == 14 * 12
    if task == "jailbreak":  # balanced weights from the training split's counts: equal counts give 1, 1
        assert results["class_weights"] == pytest.approx((1.0, 1.0), rel=0.2)


def test_step4_reports_per_class_scores_a_confusion_matrix_and_detection_recall(family_data, tiny_modernbert, tmp_path):
    finetune = load_script("model_train/3_modern_bert_finetune.py")
    inference = load_script("inference/4_inference.py")
    out = tmp_path / "jailbreak"
    finetune.main(
        ["--task", "jailbreak", "--model", str(tiny_modernbert), "--data", family_data["jailbreak"]]
        + ["--output-dir", str(out), "--max-steps", "2"]
    )
    evaluation = tmp_path / "eval.jsonl"
    frame = pd.read_csv(family_data["jailbreak"], keep_default_na=False)[["text", "label"]]
    frame.to_json(evaluation, orient="records", lines=True)
    inference.main(
        ["--task", "jailbreak", "--model", str(out), "--data", str(evaluation), "--no-benchmark"]
        + ["--images-dir", str(tmp_path)]
    )
    written = json.loads((out / "inference_results.json").read_text())["metrics"]
    assert {"accuracy", "macro", "weighted", "per_class", "detection"} <= set(written)
    assert set(written["per_class"]) == {"benign", "jailbreak"}
    assert 0 <= written["detection"]["recall_at_fpr_0.01"]["false_positive_rate"] <= 0.01
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0


def test_detection_recall_at_a_false_positive_rate_by_hand():
    from threshold import detection_metrics

    # 10 negatives and 4 positives. Flagging at 0.5 or above flags 1 of 10 negatives (0.9: 10%) and catches
    # all 4; at most 0% flagged needs a threshold above 0.9, which catches 0.95 and 0.99 only.
    negatives = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.9]
    positives = [0.5, 0.85, 0.95, 0.99]
    scores = np.array(negatives + positives)
    positive = np.array([False] * 10 + [True] * 4)
    at = detection_metrics(scores, positive, false_positive_rates=(0.1, 0.0))
    assert at["recall_at_fpr_0.1"] == {"threshold": 0.5, "recall": 1.0, "false_positive_rate": 0.1}
    assert at["recall_at_fpr_0"]["recall"] == 0.5 and at["recall_at_fpr_0"]["false_positive_rate"] == 0.0
    assert at["roc_auc"] == pytest.approx(1 - 2 / 40)  # of 40 pairs, only 0.5 and 0.85 rank below 0.9


# ---- train_all: one subprocess per run, a failure does not stop the others ----


def test_train_all_summarizes_every_run_and_survives_a_failure(family_data, tiny_modernbert, tmp_path):
    train_all = load_script("model_train/train_all.py")
    summary = train_all.main(
        ["--tasks", "intent", "jailbreak", "--methods", "full", "lora", "--model", str(tiny_modernbert)]
        + ["--data", f"intent={family_data['intent']}", f"jailbreak={tmp_path / 'missing.csv'}"]
        + ["--runs-dir", str(tmp_path / "runs"), "--", "--max-steps", "1", "--max-length", "32"]
    )
    status = {(row["task"], row["method"]): row["status"] for row in summary["rows"]}
    assert status[("intent", "full")] == status[("intent", "lora")] == "ok"
    assert status[("jailbreak", "full")].startswith("failed (exit 2)")
    rows = {(row["task"], row["method"]): row for row in summary["rows"]}
    assert rows[("intent", "lora")]["trainable_parameters"] < rows[("intent", "full")]["trainable_parameters"]
    table = (tmp_path / "runs" / "summary.md").read_text()
    assert table.count("\n| intent |") == 2 and "failed (exit 2)" in table
    assert json.loads((tmp_path / "runs" / "summary.json").read_text())["rows"] == summary["rows"]

    # an interrupted train_all continues: finished runs are kept, not trained again
    again = train_all.main(
        ["--tasks", "intent", "--methods", "full", "--model", str(tiny_modernbert), "--skip-finished"]
        + ["--runs-dir", str(tmp_path / "runs")]
    )
    assert again["rows"][0]["status"] == "ok (kept)"
    assert again["rows"][0]["test_f1"] == rows[("intent", "full")]["test_f1"]


@pytest.mark.parametrize("name", ["intent_challenge.xlsx", "jailbreak_challenge.xlsx"])
def test_family_challenge_sets_are_frozen(name):
    import hashlib

    held = pd.read_excel(ROOT / "data" / name, keep_default_na=False)
    rows = "\n".join(f"{text}\t{label}" for text, label in held[["text", "label"]].itertuples(index=False))
    assert f"`{hashlib.sha256(rows.encode('utf-8')).hexdigest()}`" in (ROOT / "data" / "README.md").read_text()


def test_data_card_quotes_the_jailbreak_policy():
    build = load_script("data_process/make_jailbreak_dataset.py")
    assert build.JAILBREAK_POLICY in (ROOT / "data" / "README.md").read_text()
