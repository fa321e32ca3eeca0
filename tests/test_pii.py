"""The pii task end to end on a tiny random ModernBERT: rendered data, a split by template, training
through step 3 and LoRA, loading with pipeline(), and step 4's span scores, masking and error file."""

import json

import pandas as pd
import pytest
from conftest import ROOT, load_script
from transformers import pipeline

from common import TASKS, split_frame
from model_train.spans import read_span_file

PII = TASKS["pii"]


@pytest.fixture(scope="module")
def pii_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("pii") / "pii.jsonl"
    summary = load_script("data_process/make_pii_dataset.py").main(["--per-template", "1", "--output", str(out)])
    return out, summary


def test_rendering_is_deterministic_and_every_span_holds_its_value(pii_data, tmp_path):
    out, summary = pii_data
    again = tmp_path / "again.jsonl"
    load_script("data_process/make_pii_dataset.py").main(["--per-template", "1", "--output", str(again)])
    assert again.read_text() == out.read_text()
    frame = read_span_file(out, PII.entity_types)
    assert summary["templates"] == 260 and len(frame) == summary["rows"]
    assert all(summary["entities"][kind] > 0 for kind in PII.entity_types)
    for text, spans in zip(frame["text"], frame["spans"], strict=True):
        for s in spans:
            assert text[s["start"] : s["end"]].strip() == text[s["start"] : s["end"]] != ""


def test_shipped_pii_data_is_the_rendering_of_the_shipped_templates(tmp_path):
    out = tmp_path / "pii.jsonl"
    load_script("data_process/make_pii_dataset.py").main(["--output", str(out)])
    assert out.read_text() == (ROOT / "data" / "pii.jsonl").read_text()


def test_no_template_feeds_two_splits(pii_data):
    frame = read_span_file(pii_data[0], PII.entity_types)
    splits = split_frame(frame, 0.1, 0.1, seed=0, group_column=PII.split_group_column)
    templates = [set(part["template_id"]) for part in splits.values()]
    assert not (templates[0] & templates[1] or templates[0] & templates[2] or templates[1] & templates[2])
    assert sum(len(part) for part in splits.values()) == len(frame)


@pytest.fixture(scope="module")
def trained_pii(pii_data, tiny_modernbert, tmp_path_factory):
    out = tmp_path_factory.mktemp("pii-run") / "pii"
    finetune = load_script("model_train/3_modern_bert_finetune.py")
    results = finetune.main(
        ["--task", "pii", "--model", str(tiny_modernbert), "--data", str(pii_data[0])]
        + ["--output-dir", str(out), "--max-steps", "3", "--max-length", "64"]
    )
    return out, results


def test_step3_trains_pii_and_scores_exact_spans(trained_pii):
    out, results = trained_pii
    assert {"micro", "macro", "per_class", "seqeval"} <= set(results["test"])
    assert 0 <= results["test"]["micro"]["f1"] <= 1 and results["metric_for_best_model"] == "f1"
    test_split = [json.loads(line) for line in (out / "test_split.jsonl").read_text().splitlines()]
    assert len(test_split) == results["split_sizes"]["test"] and "spans" in test_split[0]
    assert "aggregation_strategy" in (out / "README.md").read_text()


def test_the_saved_model_loads_with_the_token_classification_pipeline(trained_pii):
    out, _ = trained_pii
    finder = pipeline("token-classification", model=str(out), aggregation_strategy="simple")
    assert finder.model.config.id2label == PII.id2label and len(PII.labels) == 35
    for entity in finder("Call Anna Berg on +46 70 123 45 67"):
        assert entity["entity_group"] in PII.entity_types  # B-/I- merged into the type's name


def test_step4_scores_a_span_file_writes_errors_and_masks_text(trained_pii, pii_data, tmp_path):
    out, _ = trained_pii
    inference = load_script("inference/4_inference.py")
    results = inference.main(["--task", "pii", "--model", str(out), "--data", str(pii_data[0]), "--timed-runs", "5"])
    written = json.loads((out / "inference_results.json").read_text())
    assert written["metrics"]["micro"]["support"] == sum(
        results["metrics"]["per_class"][k]["support"] for k in results["metrics"]["per_class"]
    )
    assert written["latency"]["batch1_ms"]["p50"] > 0
    errors = [json.loads(line) for line in (out / "span_errors.jsonl").read_text().splitlines()]
    assert all(e["missed"] or e["false_alarms"] for e in errors)
    one = inference.main(
        ["--task", "pii", "--model", str(out), "--text", "Call Anna Berg on +46 70 123 45 67", "--mask"]
    )
    assert one["masked"].count("[") == len(one["entities"])


def test_lora_trains_pii_with_the_docs_settings(pii_data, tiny_modernbert, tmp_path):
    lora = load_script("lora/3_lora_finetune.py")
    out = tmp_path / "pii-lora"
    lora.main(
        ["--task", "pii", "--model", str(tiny_modernbert), "--data", str(pii_data[0]), "--output-dir", str(out)]
        + ["--max-steps", "2", "--max-length", "64", "--merge"]
    )
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["task_type"]) == (32, 64, "TOKEN_CLS")
    finder = pipeline("token-classification", model=str(out / "merged"), aggregation_strategy="simple")
    assert finder.model.config.id2label == PII.id2label
    assert isinstance(pd.DataFrame(finder("Anna Berg, anna@example.com")), pd.DataFrame)


def test_pipeline_simple_aggregation_gives_exact_spans_from_correct_tags(tiny_modernbert):
    """With the tags right, pipeline(aggregation_strategy="simple") on a byte-level BPE tokenizer (offsets
    with the leading space, as ModernBERT's) returns the exact character spans: the README relies on it."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from transformers.modeling_outputs import TokenClassifierOutput

    from model_train.spans import align_labels

    model = AutoModelForTokenClassification.from_pretrained(
        str(tiny_modernbert), num_labels=len(PII.labels), id2label=PII.id2label, label2id=PII.label2id
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_modernbert))
    finder = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple")
    text = "📦 pls call Zoë Ångström on +46 70 123 45 67, thanks"
    gold = [
        {"start": text.index("Zoë"), "end": text.index(" on"), "label": "PERSON"},
        {"start": text.index("+46"), "end": text.index(","), "label": "PHONE_NUMBER"},
    ]
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    tags = align_labels(text, encoded["offset_mapping"], encoded["special_tokens_mask"], gold, PII.label2id)
    logits = torch.full((1, len(tags), len(PII.labels)), -10.0)
    for position, tag in enumerate(tags):
        logits[0, position, max(tag, 0)] = 10.0  # special tokens: "O"
    finder.model.forward = lambda *args, **kwargs: TokenClassifierOutput(logits=logits)
    found = [(e["start"], e["end"], e["entity_group"]) for e in finder(text)]
    assert found == [(s["start"], s["end"], s["label"]) for s in gold]
