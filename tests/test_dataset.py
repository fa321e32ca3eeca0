"""The shipped dataset meets the rules in data/README.md: size, columns, balance, coverage, no templating."""

import pandas as pd
import pytest

from common import ATTACK_STYLES, CATEGORY_GROUPS, LOGISTICS_TOPICS, OFF_TOPIC_DOMAINS, category_label, normalize_text, read_table
from conftest import SHIPPED_DATA


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
    from common import LABEL_POLICY
    from conftest import ROOT

    card = (ROOT / "data" / "README.md").read_text()
    assert LABEL_POLICY in card
    groups = dataset["category"].str.partition("/")[0].value_counts()
    for group, n in groups.items():
        assert f"| {group} | {group == 'logistics'} | {n} |" in card
    assert f"**{len(dataset)}**" in card
    for category, n in dataset["category"].value_counts().items():
        group, _, key = category.partition("/")
        assert f" {key} {n}" in card.split(f"**{group}**")[1].split("\n")[0]
