"""Unit tests for common.py, each checked against an answer worked out by hand."""

import time

import pandas as pd
import pytest

import common
from common import TASKS, UserError

GUARDRAIL = TASKS["guardrail"]


# ---- text normalisation and splitting ----


def test_normalize_text_ignores_case_punctuation_and_spacing():
    assert common.normalize_text("  Where IS my   parcel?? ") == "where is my parcel"
    assert common.normalize_text("Where is my parcel!") == common.normalize_text("where is my parcel")
    assert common.normalize_text("ﬁle a claim") == "file a claim"  # NFKC folds the ligature
    assert common.normalize_text("ship 2kg") != common.normalize_text("ship 3kg")


def make_frame(texts, labels):
    return pd.DataFrame({"text": texts, "label_id": labels})


def test_split_is_stratified_and_sized_by_distinct_texts():
    # 10 distinct texts per class; test 20% and validation 20% of 20 groups -> 4 / 4 / 12 rows,
    # half of each split per class.
    frame = make_frame([f"query number {i}" for i in range(20)], [0] * 10 + [1] * 10)
    splits = common.split_frame(frame, val_size=0.2, test_size=0.2, seed=0)
    assert {name: len(part) for name, part in splits.items()} == {"train": 12, "validation": 4, "test": 4}
    for part in splits.values():
        assert part["label_id"].sum() * 2 == len(part)


def test_near_identical_texts_never_straddle_splits():
    base = [f"question {i}" for i in range(20)]
    variants = ["Question 3??", "QUESTION 3", "question 17!", "  question   17 "]
    frame = make_frame(base + variants, [0] * 10 + [1] * 10 + [0, 0, 1, 1])
    splits = common.split_frame(frame, val_size=0.2, test_size=0.2, seed=1)
    where = {name: set(part["text"].map(common.normalize_text)) for name, part in splits.items()}
    assert not (
        where["train"] & where["validation"] or where["train"] & where["test"] or where["validation"] & where["test"]
    )
    assert sum(len(p) for p in splits.values()) == 24  # nothing lost


def test_split_is_reproducible_with_the_same_seed():
    frame = make_frame([f"text {i}" for i in range(40)], [0, 1] * 20)
    first = common.split_frame(frame, 0.1, 0.2, seed=7)
    second = common.split_frame(frame, 0.1, 0.2, seed=7)
    assert all(first[k]["text"].tolist() == second[k]["text"].tolist() for k in first)


def test_split_rejects_sizes_that_leave_no_training_data():
    frame = make_frame([f"text {i}" for i in range(40)], [0, 1] * 20)
    with pytest.raises(UserError, match="sum to less than 1"):
        common.split_frame(frame, 0.5, 0.5, seed=0)


# ---- metrics ----


def test_classification_metrics_match_hand_computation():
    # y_true 1 1 1 0 0, y_pred 1 1 0 0 1
    # class 1: TP 2, FP 1, FN 1 -> P = R = F1 = 2/3 ; class 0: TP 1, FP 1, FN 1 -> P = R = F1 = 1/2
    metrics = common.classification_metrics([1, 1, 1, 0, 0], [1, 1, 0, 0, 1], ("False", "True"))
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["per_class"]["True"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert metrics["per_class"]["False"] == pytest.approx(
        {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2}
    )
    assert metrics["weighted"]["f1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2) / 5)
    assert metrics["macro"]["f1"] == pytest.approx(7 / 12)


def test_classification_metrics_of_a_class_never_predicted_is_zero_not_an_error():
    metrics = common.classification_metrics([0, 1, 1], [0, 0, 0], ("False", "True"))
    assert metrics["per_class"]["True"]["precision"] == 0.0
    assert metrics["per_class"]["False"]["recall"] == 1.0


def test_group_accuracy_counts_per_category_group():
    categories = pd.Series(["logistics/tracking", "logistics/returns", "attack/role_play", "off_topic/music"])
    correct = pd.Series([True, False, True, True])
    assert common.group_accuracy(categories, correct) == {
        "attack": {"accuracy": 1.0, "n": 1},
        "logistics": {"accuracy": 0.5, "n": 2},
        "off_topic": {"accuracy": 1.0, "n": 1},
    }


# ---- data validation ----


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("True", True),
        (" false ", False),
        ("yes", True),
        (1, True),
        (0, False),
        ("maybe", None),
        (2, None),
        (None, None),
    ],
)
def test_parse_bool(value, expected):
    assert common.parse_bool(value) is expected


def valid_rows():
    return pd.DataFrame({"text": ["where is my parcel", "tell me a joke"], "label": [True, False]})


def test_validate_frame_maps_boolean_labels_to_the_blog_ids():
    frame = common.validate_frame(valid_rows().assign(label=["TRUE", "false"]), GUARDRAIL, "text", "label")
    assert frame["label_id"].tolist() == [1, 0]
    assert GUARDRAIL.id2label == {0: "False", 1: "True"}


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (valid_rows().rename(columns={"label": "is_logistics"}), "column 'label' is missing"),
        (valid_rows().assign(label=["True", "maybe"]), "not boolean .*'maybe' at data row 3"),
        (valid_rows().assign(label=[True, True]), "all rows have the label 'True'"),
        (valid_rows().assign(text=["where is my parcel", "   "]), "empty 'text' .*data row 3"),
        (valid_rows().iloc[:0], "no rows"),
    ],
)
def test_validate_frame_rejects_bad_input_with_one_sentence(frame, message):
    with pytest.raises(UserError, match=message) as error:
        common.validate_frame(frame, GUARDRAIL, "text", "label")
    assert "\n" not in str(error.value)


def test_read_table_names_the_missing_file():
    with pytest.raises(UserError, match="'nope.xlsx' not found"):
        common.read_table("nope.xlsx")


# ---- model resolution ----


def test_resolve_model_rejects_missing_and_incomplete_directories(tmp_path):
    with pytest.raises(UserError, match="not found"):
        common.resolve_model("./no-such-model-dir")
    with pytest.raises(UserError, match="no config.json"):
        common.resolve_model(str(tmp_path))


def test_resolve_model_offline_and_uncached_says_how_to_use_a_local_copy():
    with pytest.raises(UserError, match=r"--model \./ModernBERT-base"):
        common.resolve_model("answerdotai/ModernBERT-base")


def test_resolve_model_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    started = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub"):
        common.resolve_model("some-org/some-uncached-model")
    assert time.perf_counter() - started < 5


# ---- settings: one env-file rule for every script ----


def test_env_file_is_the_one_given_never_one_found_in_a_parent_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("hf_token", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / ".env").write_text("hf_token=from_parent\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert common.get_hf_token() is None  # ./.env of the working directory only
    (tmp_path / "sub" / "other.env").write_text("hf_token=from_flag_file\n")
    assert common.get_hf_token("other.env") == "from_flag_file"
    monkeypatch.delenv("hf_token")
    monkeypatch.setenv("HF_TOKEN", "from_environment")  # the environment wins over the file, either name
    assert common.get_hf_token("other.env") == "from_environment"
