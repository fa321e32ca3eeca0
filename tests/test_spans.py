"""model_train/spans.py by hand: BIO alignment by character offsets on a byte-level BPE tokenizer whose
offsets include a word's leading space (as ModernBERT's do), decoding back to exact spans, and scores."""

import json

import pytest
from conftest import load_script

from common import PII_TYPES, UserError
from model_train.spans import (
    align_labels,
    bio_labels,
    decode_spans,
    mask_text,
    read_span_file,
    seqeval_scores,
    span_metrics,
)

LABELS = bio_labels(PII_TYPES)
LABEL2ID = {label: i for i, label in enumerate(LABELS)}
ID2LABEL = dict(enumerate(LABELS))


@pytest.fixture(scope="module")
def tokenizer():
    """A small byte-level BPE like ModernBERT's: no subword prefix, offsets with the leading space."""
    builder = load_script("model_train/random_init_model.py")
    texts = ["please call me back about my parcel, the driver left a note"] * 20
    texts += ["my email is on the label and the phone number too"] * 20
    return builder.train_tokenizer(texts, vocab_size=300)


def encode(tokenizer, text):
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    return encoded["offset_mapping"], encoded["special_tokens_mask"]


def tags_of(tokenizer, text, spans):
    offsets, special = encode(tokenizer, text)
    ids = align_labels(text, offsets, special, spans, LABEL2ID)
    return offsets, special, ids


def round_trip(tokenizer, text, spans):
    """Decode the aligned gold tags: the spans must come back exactly."""
    offsets, special, ids = tags_of(tokenizer, text, spans)
    predicted = [0 if i == -100 else i for i in ids]
    decoded = decode_spans(text, offsets, special, predicted, [1.0] * len(ids), ID2LABEL)
    return [(e["start"], e["end"], e["label"]) for e in decoded], ids


def test_offsets_of_this_tokenizer_include_the_leading_space(tokenizer):
    offsets, _ = encode(tokenizer, "call Anna")
    assert (4, 9) in [tuple(o) for o in offsets] or any(s == 4 for s, _ in offsets)  # " Anna..." starts at the space


def test_a_name_at_the_start_of_the_text(tokenizer):
    text = "Anna Berg called about parcel 123."
    spans = [{"start": 0, "end": 9, "label": "PERSON"}]
    decoded, ids = round_trip(tokenizer, text, spans)
    assert decoded == [(0, 9, "PERSON")]
    tags = [ID2LABEL[i] for i in ids if i != -100]
    assert tags[0] == "B-PERSON" and set(tags[1:]) >= {"O"} and "B-PERSON" not in tags[1:]
    assert ids[0] == -100 and ids[-1] == -100  # [CLS] and [SEP]


def test_the_decoded_start_skips_the_leading_space(tokenizer):
    text = "pls call Anna Berg"
    decoded, _ = round_trip(tokenizer, text, [{"start": 9, "end": 18, "label": "PERSON"}])
    assert decoded == [(9, 18, "PERSON")] and text[9:18] == "Anna Berg"


def test_an_entity_right_after_punctuation(tokenizer):
    text = "name:Anna Berg;tel:(555) 010-9999)"
    spans = [{"start": 5, "end": 14, "label": "PERSON"}, {"start": 19, "end": 33, "label": "PHONE_NUMBER"}]
    decoded, _ = round_trip(tokenizer, text, spans)
    assert decoded == [(5, 14, "PERSON"), (19, 33, "PHONE_NUMBER")]


def test_an_email_split_into_many_sub_tokens(tokenizer):
    text = "mail me at jo.doe+x7@ex-ample.com."
    spans = [{"start": 11, "end": 33, "label": "EMAIL_ADDRESS"}]
    decoded, ids = round_trip(tokenizer, text, spans)
    assert decoded == [(11, 33, "EMAIL_ADDRESS")]
    tags = [ID2LABEL[i] for i in ids if i != -100]
    assert tags.count("B-EMAIL_ADDRESS") == 1 and tags.count("I-EMAIL_ADDRESS") >= 4
    assert tags[-1] == "O"  # the final full stop is not part of the address


def test_adjacent_entities_of_different_types(tokenizer):
    text = "Anna Berg +46 70 123 45 67"
    spans = [{"start": 0, "end": 9, "label": "PERSON"}, {"start": 10, "end": 26, "label": "PHONE_NUMBER"}]
    decoded, ids = round_trip(tokenizer, text, spans)
    assert decoded == [(0, 9, "PERSON"), (10, 26, "PHONE_NUMBER")]
    tags = [ID2LABEL[i] for i in ids if i != -100]
    assert tags.count("B-PERSON") == tags.count("B-PHONE_NUMBER") == 1  # two entities, neither merged nor split


def test_unicode_accents_and_an_emoji_before_an_entity(tokenizer):
    text = "Grüße! 📦 Zoë Ångström, Malmö"
    start = text.index("Zoë")
    spans = [
        {"start": start, "end": start + len("Zoë Ångström"), "label": "PERSON"},
        {"start": text.index("Malmö"), "end": len(text), "label": "GPE"},
    ]
    decoded, ids = round_trip(tokenizer, text, spans)
    assert decoded == [(s["start"], s["end"], s["label"]) for s in spans]
    offsets, special = encode(tokenizer, text)
    emoji = text.index("📦")
    for (s, e), i in zip(offsets, ids, strict=True):
        if s <= emoji < e:
            assert ID2LABEL.get(i, "special") in ("O", "special")  # the emoji's byte pieces are outside


def test_decoding_never_drops_an_entity_that_opens_with_i_and_trims_punctuation(tokenizer):
    text = "call Anna Berg, thanks"
    offsets, special = encode(tokenizer, text)
    tags = []
    for s, e in offsets:
        visible = text[s:e].strip()
        tags.append("I-PERSON" if visible and (visible in "Anna Berg," and s >= 4 and e <= 15) else "O")
    decoded = decode_spans(text, offsets, special, [LABEL2ID[t] for t in tags], [0.9] * len(tags), ID2LABEL)
    assert [(e["start"], e["end"], e["text"]) for e in decoded] == [(5, 14, "Anna Berg")]
    assert decoded[0]["score"] == pytest.approx(0.9)


def test_mask_replaces_each_entity_with_its_type():
    entities = [{"start": 5, "end": 14, "label": "PERSON"}, {"start": 18, "end": 35, "label": "PHONE_NUMBER"}]
    assert mask_text("Call Anna Berg on +46 70 123 45 67", entities) == "Call [PERSON] on [PHONE_NUMBER]"


def test_span_metrics_count_only_exact_matches_by_hand():
    gold = [[{"start": 0, "end": 4, "label": "PERSON"}, {"start": 10, "end": 20, "label": "EMAIL_ADDRESS"}], []]
    pred = [[{"start": 0, "end": 4, "label": "PERSON"}, {"start": 10, "end": 19, "label": "EMAIL_ADDRESS"}]]
    pred.append([{"start": 3, "end": 5, "label": "PERSON"}])
    scores = span_metrics(gold, pred, PII_TYPES)
    # 1 exact hit of 3 predicted and 2 true; the email ends one character early, so it does not count
    assert scores["micro"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4, "support": 2})
    assert scores["per_class"]["PERSON"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert scores["per_class"]["EMAIL_ADDRESS"]["f1"] == 0


def test_seqeval_strict_ignores_an_entity_that_opens_with_i():
    true = [["B-PERSON", "I-PERSON", "O"]]
    assert seqeval_scores(true, [["B-PERSON", "I-PERSON", "O"]])["f1"] == 1.0
    assert seqeval_scores(true, [["I-PERSON", "I-PERSON", "O"]])["f1"] == 0.0


def test_both_span_formats_read_to_the_same_rows(tmp_path):
    presidio = [
        {
            "full_text": "Call Anna on 555-0101",
            "spans": [
                {"entity_type": "PHONE_NUMBER", "entity_value": "555-0101", "start_position": 13, "end_position": 21},
                {"entity_type": "PERSON", "entity_value": "Anna ", "start_position": 5, "end_position": 10},
            ],
            "template_id": 7,
        }
    ]
    (tmp_path / "p.json").write_text(json.dumps(presidio))
    ours = {"text": "Call Anna on 555-0101", "spans": [{"start": 5, "end": 9, "label": "PERSON"}]}
    ours["spans"].append({"start": 13, "end": 21, "label": "PHONE_NUMBER"})
    (tmp_path / "o.jsonl").write_text(json.dumps(ours) + "\n")
    a, b = read_span_file(tmp_path / "p.json", PII_TYPES), read_span_file(tmp_path / "o.jsonl", PII_TYPES)
    assert a["spans"][0] == b["spans"][0] == ours["spans"]  # sorted, and "Anna " stripped to "Anna"
    assert a["template_id"][0] == "presidio-7"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"text": "hi", "spans": [{"start": 0, "end": 2, "label": "PET"}]}, "unknown entity type 'PET'"),
        ({"text": "hi", "spans": [{"start": 0, "end": 5, "label": "PERSON"}]}, "outside its 2-character text"),
        ({"words": "hi"}, "neither 'text' nor 'full_text'"),
        (
            {
                "text": "Anna Berg",
                "spans": [{"start": 0, "end": 6, "label": "PERSON"}, {"start": 5, "end": 9, "label": "GPE"}],
            },
            "overlap",
        ),
    ],
)
def test_bad_span_rows_are_one_sentence_naming_the_row(tmp_path, record, message):
    (tmp_path / "bad.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(UserError, match=message):
        read_span_file(tmp_path / "bad.jsonl", PII_TYPES)
