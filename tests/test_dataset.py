"""The shipped data meets the rules in data/README.md: size, columns, balance, coverage, no templating,
no surface cues; the challenge set is frozen and apart from the training rows."""

import hashlib

import numpy as np
import pandas as pd
import pytest
from conftest import CHALLENGE_DATA, ROOT, SHIPPED_DATA, load_script
from taxonomy import ATTACK_STYLES, CATEGORY_GROUPS, LOGISTICS_TOPICS, OFF_TOPIC_DOMAINS, category_label

from common import normalize_text, read_table


@pytest.fixture(scope="module")
def dataset() -> pd.DataFrame:
    return read_table(SHIPPED_DATA)


def test_columns_and_types(dataset):
    assert list(dataset.columns) == ["text", "label", "category", "source"]
    assert dataset["label"].dtype == bool
    assert (dataset["text"].str.strip() != "").all()


def test_at_least_3000_unique_queries_after_normalisation(dataset):
    assert len(dataset) >= 3000
    assert not dataset["text"].map(normalize_text).duplicated().any()


def test_every_label_follows_its_category(dataset):
    assert (dataset["category"].map(category_label) == dataset["label"]).all()


def test_label_balance_is_about_half(dataset):
    assert 0.4 <= dataset["label"].mean() <= 0.6


def test_coverage_of_topics_domains_and_attack_styles(dataset):
    present = dataset["category"].str.partition("/")
    by_group = present.groupby(0)[2].nunique().to_dict()
    assert by_group["logistics"] >= 25 and by_group["logistics"] == len(LOGISTICS_TOPICS)
    assert by_group["off_topic"] >= 30 and by_group["off_topic"] == len(OFF_TOPIC_DOMAINS)
    assert by_group["attack"] >= 7 and by_group["attack"] == len(ATTACK_STYLES)
    assert by_group["hard_negative"] == len(CATEGORY_GROUPS["hard_negative"])


def test_attacks_are_at_least_15_percent_and_always_blocked(dataset):
    attacks = dataset[dataset["category"].str.startswith("attack/")]
    assert len(attacks) / len(dataset) >= 0.15
    assert not attacks["label"].any()


def test_no_four_word_opening_is_shared_by_more_than_one_percent(dataset):
    openings = dataset["text"].map(lambda text: " ".join(normalize_text(text).split()[:4]))
    most_common = openings.value_counts()
    assert most_common.iloc[0] <= len(dataset) / 100, most_common.head(3).to_dict()


def test_data_card_quotes_the_policy_and_the_true_counts(dataset):
    from taxonomy import LABEL_POLICY

    card = (ROOT / "data" / "README.md").read_text()
    assert LABEL_POLICY in card
    groups = dataset["category"].str.partition("/")[0].value_counts()
    for group, n in groups.items():
        assert f"| {group} | {group == 'logistics'} | {n} |" in card
    assert f"**{len(dataset)}**" in card
    for category, n in dataset["category"].value_counts().items():
        group, _, key = category.partition("/")
        assert f" {key} {n}" in card.split(f"**{group}**")[1].split("\n")[0]


def test_surface_cues_alone_do_not_predict_the_label(dataset):
    # A gradient-boosting model that sees only lengths, punctuation, casing and digits (no words)
    # must stay within 5 points of always predicting the majority label.
    probe = load_script("data_process/cue_probe.py")
    labels = dataset["label"].astype(int).to_numpy()
    result = probe.probe(probe.feature_table(dataset["text"].tolist()), labels, folds=5, seed=0)
    assert result["majority_baseline"] == pytest.approx(max(labels.mean(), 1 - labels.mean()))
    assert result["gap"] <= 0.05, result


def test_cue_probe_finds_a_planted_cue():
    # The probe must be able to fail: a dataset where every allowed row ends in "?" is caught.
    probe = load_script("data_process/cue_probe.py")
    texts = [f"where is parcel {i}?" for i in range(100)] + [f"tell me a joke {i}" for i in range(100)]
    result = probe.probe(probe.feature_table(texts), np.array([1] * 100 + [0] * 100), folds=5, seed=0)
    assert result["gap"] > 0.4


@pytest.fixture(scope="module")
def challenge() -> pd.DataFrame:
    return read_table(CHALLENGE_DATA)


def test_challenge_set_covers_every_group_and_follows_the_policy(challenge):
    assert list(challenge.columns) == ["text", "label", "category"]
    assert len(challenge) >= 400
    assert (challenge["category"].map(category_label) == challenge["label"]).all()
    groups = challenge["category"].str.partition("/")[0].value_counts()
    assert set(groups.index) == set(CATEGORY_GROUPS) and groups.min() >= 40


def test_challenge_set_is_never_trained_on(dataset, challenge):
    assert not set(challenge["text"].map(normalize_text)) & set(dataset["text"].map(normalize_text))


def test_challenge_set_is_frozen(challenge):
    # The set is what makes data rounds comparable, so it must never change: the data card records
    # the digest of its rows, and any edit fails here.
    rows = "\n".join(
        f"{t}\t{label}\t{c}" for t, label, c in challenge[["text", "label", "category"]].itertuples(index=False)
    )
    digest = hashlib.sha256(rows.encode("utf-8")).hexdigest()
    assert f"`{digest}`" in (ROOT / "data" / "README.md").read_text()
