"""Token classification over exact character spans (the `pii` task): reading span files, aligning BIO
labels to tokens by character offsets, decoding predicted tags back to spans, and entity-level scores.

Shared by step 3 (alignment, the metric that picks the best epoch, test scores) and step 4 (decoding,
masking, scores); installed with the model_train package, so both import it without path edits.

Alignment works on the raw text through the tokenizer's offset mapping, never on words: ModernBERT's
BPE tokenizer has no subword prefix and its offsets include a word's leading space (" Anna" covers
the space before the name), which is what broke the Semantic Router's span decoder. Every offset is
therefore read without its leading whitespace.

Continuation policy: the first token that overlaps an entity gets B-TYPE and every following token
inside the same entity gets I-TYPE (continuation sub-tokens are labelled, not -100), so that
pipeline("token-classification", aggregation_strategy="simple") can merge them. Special tokens and
padding get -100.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from common import UserError


def bio_labels(types: tuple[str, ...]) -> tuple[str, ...]:
    """O, then B- and I- per type: 17 PII types give 35 labels."""
    return ("O",) + tuple(f"{prefix}-{t}" for t in types for prefix in ("B", "I"))


# ---- Reading: Presidio's format or ours, into one frame of text, spans and template ----


def read_span_file(path: str | Path, types: tuple[str, ...]) -> pd.DataFrame:
    """Rows of `text`, `spans` ([{start, end, label}], end exclusive) and `template_id`.

    Reads Presidio's synthetic-data format (a JSON list of {full_text, spans: [{entity_type,
    entity_value, start_position, end_position}], template_id}) and this project's JSON Lines
    ({text, spans: [{start, end, label}], template_id}). Span ends are stripped of whitespace.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"span file {str(path)!r} not found; pass --data with a .json (Presidio) or .jsonl file.")
    try:
        text = path.read_text(encoding="utf-8")
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except (ValueError, UnicodeError) as error:
        raise UserError(f"{str(path)!r} is not JSON or JSON Lines ({str(error)[:80]}); check its format.") from error
    rows = [parse_record(record, i, path.name, types) for i, record in enumerate(records, 1)]
    if not rows:
        raise UserError(f"{str(path)!r} has no rows; add texts with their spans.")
    return pd.DataFrame(rows)


def parse_record(record: dict, number: int, file_name: str, types: tuple[str, ...]) -> dict:
    """One row in our shape, or a UserError that names the row and what is wrong with it."""
    where = f"row {number} of {file_name}"
    if "full_text" in record:  # Presidio
        text = record["full_text"]
        raw = [(s["start_position"], s["end_position"], s["entity_type"]) for s in record.get("spans") or []]
        template = f"presidio-{record.get('template_id')}"
    elif "text" in record:
        text = record["text"]
        raw = [(s["start"], s["end"], s["label"]) for s in record.get("spans") or []]
        template = str(record.get("template_id", f"{file_name}-{number}"))
    else:
        raise UserError(f"{where} has neither 'text' nor 'full_text'; give each row its text and spans.")
    spans = []
    for start, end, label in raw:
        if label not in types:
            raise UserError(f"{where} has the unknown entity type {label!r}; the task knows {list(types)}.")
        if not 0 <= start < end <= len(text):
            raise UserError(f"{where}: span {start}-{end} lies outside its {len(text)}-character text.")
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        spans.append({"start": start, "end": end, "label": label})
    spans.sort(key=lambda s: s["start"])
    for left, right in zip(spans, spans[1:], strict=False):
        if right["start"] < left["end"]:
            raise UserError(f"{where}: spans {left} and {right} overlap; BIO tags need one entity per character.")
    return {"text": text, "spans": spans, "template_id": template}


# ---- Alignment: character spans -> one label id per token ----


def visible_span(text: str, start: int, end: int) -> tuple[int, int]:
    """A token's offsets without the leading whitespace that ModernBERT's offsets include."""
    while start < end and text[start].isspace():
        start += 1
    return start, end


def align_labels(text: str, offsets, special_mask, spans: list[dict], label2id: dict[str, int]) -> list[int]:
    """B-TYPE for the first token that overlaps an entity, I-TYPE for the tokens after it inside the
    same entity, O elsewhere, -100 for special tokens."""
    labels, started = [], set()
    for (start, end), special in zip(offsets, special_mask, strict=True):
        if special:
            labels.append(-100)
            continue
        visible_start, end = visible_span(text, start, end)
        if visible_start == end:  # a whitespace-only token: I- between two tokens of one entity, else O
            inside = next((i for i, s in enumerate(spans) if s["start"] <= start and end <= s["end"]), None)
            tag = f"I-{spans[inside]['label']}" if inside in started else "O"
            labels.append(label2id[tag])
            continue
        entity = next((i for i, s in enumerate(spans) if visible_start < s["end"] and end > s["start"]), None)
        if entity is None:
            labels.append(label2id["O"])
            continue
        prefix = "I" if entity in started else "B"
        started.add(entity)
        labels.append(label2id[f"{prefix}-{spans[entity]['label']}"])
    return labels


def tokenize_with_labels(tokenizer, texts: list[str], spans: list[list[dict]], max_length: int, label2id) -> dict:
    """Token ids, attention masks and aligned labels for a batch of texts (no padding: the collator pads)."""
    encoded = tokenizer(
        texts, truncation=True, max_length=max_length, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    encoded["labels"] = [
        align_labels(text, offsets, special, row_spans, label2id)
        for text, offsets, special, row_spans in zip(
            texts, encoded["offset_mapping"], encoded["special_tokens_mask"], spans, strict=True
        )
    ]
    encoded.pop("offset_mapping")
    encoded.pop("special_tokens_mask")
    return encoded


# ---- Decoding: one tag per token -> spans, never dropping an entity ----

CLOSING = {")": "(", "]": "[", "}": "{"}
TRAILING_PUNCTUATION = ",;:!?\"'»"


def trim_end(text: str, start: int, end: int) -> int:
    """The span's end without trailing whitespace and punctuation; a closing bracket stays when the span
    opens it ("(555) 123" keeps nothing to trim, "Acme (UK)" keeps its ")"), and a full stop stays, as
    in "Mr." or "Acme Inc."."""
    while end > start:
        last = text[end - 1]
        if last.isspace() or last in TRAILING_PUNCTUATION or (last in CLOSING and CLOSING[last] not in text[start:end]):
            end -= 1
        else:
            break
    return end


def decode_spans(text: str, offsets, special_mask, tag_ids, scores, id2label: dict[int, str]) -> list[dict]:
    """Entities from per-token tags: a B- starts one; an I- continues the open entity of its type, and an
    I- with no open entity of its type starts one too (a common model error that must not drop the
    entity). Each entity gets its text, exact character span and mean token confidence."""
    entities, current = [], None

    def close():
        if current is not None:
            end = trim_end(text, current["start"], current["end"])
            if end > current["start"]:
                entities.append(
                    {
                        "label": current["label"],
                        "start": current["start"],
                        "end": end,
                        "text": text[current["start"] : end],
                        "score": sum(current["scores"]) / len(current["scores"]),
                    }
                )

    for (start, end), special, tag_id, score in zip(offsets, special_mask, tag_ids, scores, strict=True):
        if special:
            continue
        start, end = visible_span(text, start, end)
        if start == end:  # whitespace between words neither opens nor closes an entity
            continue
        tag = id2label[int(tag_id)]
        if tag == "O":
            close()
            current = None
            continue
        prefix, label = tag.split("-", 1)
        if prefix == "B" or current is None or current["label"] != label:
            close()
            current = {"label": label, "start": start, "end": end, "scores": [float(score)]}
        else:
            current["end"] = end
            current["scores"].append(float(score))
    close()
    return entities


def mask_text(text: str, entities: list[dict]) -> str:
    """The text with each entity replaced by [TYPE]."""
    for entity in sorted(entities, key=lambda e: e["start"], reverse=True):
        text = text[: entity["start"]] + f"[{entity['label']}]" + text[entity["end"] :]
    return text


# ---- Scores: exact spans, and seqeval on tag sequences ----


def span_metrics(gold: list[list[dict]], predicted: list[list[dict]], types: tuple[str, ...]) -> dict:
    """Precision, recall and F1 of exact (type, start, end) matches: micro overall, macro over the types
    that occur, and per type."""

    def keys(rows):
        return {(i, s["label"], s["start"], s["end"]) for i, row in enumerate(rows) for s in row}

    true, pred = keys(gold), keys(predicted)

    def prf(t, p):
        hit = len(t & p)
        precision = hit / len(p) if p else 0.0
        recall = hit / len(t) if t else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": len(t)}

    per_type = {}
    for label in types:
        t = {k for k in true if k[1] == label}
        p = {k for k in pred if k[1] == label}
        if t or p:
            per_type[label] = prf(t, p)
    scored = [m for m in per_type.values() if m["support"]]
    macro = {
        name: sum(m[name] for m in scored) / len(scored) if scored else 0.0 for name in ("precision", "recall", "f1")
    }
    return {"micro": prf(true, pred), "macro": macro, "per_class": per_type}


def seqeval_scores(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict:
    """seqeval in strict IOB2 mode: an entity counts when its tags are well-formed and match exactly
    (an entity that opens with I- is not one, so this is stricter than our decoder)."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    options = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    return {
        "precision": float(precision_score(true_tags, predicted_tags, **options)),
        "recall": float(recall_score(true_tags, predicted_tags, **options)),
        "f1": float(f1_score(true_tags, predicted_tags, **options)),
    }


def tag_sequences(label_ids, predicted_ids, id2label: dict[int, str]) -> tuple[list[list[str]], list[list[str]]]:
    """True and predicted tag names per row, without the -100 positions (special tokens, padding)."""
    true, pred = [], []
    for row_labels, row_pred in zip(label_ids, predicted_ids, strict=True):
        keep = [i for i, label in enumerate(row_labels) if label != -100]
        true.append([id2label[int(row_labels[i])] for i in keep])
        pred.append([id2label[int(row_pred[i])] for i in keep])
    return true, pred


def predict_entities(
    model, tokenizer, texts: list[str], max_length: int, id2label, batch_size: int = 32, return_tags: bool = False
):
    """The decoded entities of each text: batches through the model, tags by argmax, confidence per token.
    With return_tags, also each text's predicted tag names, special tokens left out (for seqeval)."""
    import torch

    entities, tag_rows = [], []
    for i in range(0, len(texts), batch_size):
        batch = texts[i : i + batch_size]
        encoded = tokenizer(
            batch,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        offsets, special = encoded.pop("offset_mapping").tolist(), encoded.pop("special_tokens_mask")
        special = (special.bool() | (encoded["attention_mask"] == 0)).tolist()  # padding counts as special
        with torch.inference_mode():
            logits = model(**{k: v.to(model.device) for k, v in encoded.items()}).logits
        scores, tags = logits.float().softmax(-1).max(-1)
        for j, text in enumerate(batch):
            entities.append(decode_spans(text, offsets[j], special[j], tags[j].tolist(), scores[j].tolist(), id2label))
            tag_rows.append(
                [id2label[int(t)] for t, skip in zip(tags[j].tolist(), special[j], strict=True) if not skip]
            )
    return (entities, tag_rows) if return_tags else entities


def score_entities(model, tokenizer, texts: list[str], gold: list[list[dict]], max_length: int, task, batch_size=32):
    """(metrics, predicted entities) for texts with known spans: exact-span scores of the decoded entities,
    and seqeval's on the tag sequences, the true tags aligned on the same tokens. Steps 3 and 4 both use it."""
    predicted, predicted_tags = predict_entities(
        model, tokenizer, texts, max_length, task.id2label, batch_size, return_tags=True
    )
    metrics = span_metrics(gold, predicted, task.entity_types)
    true_ids = tokenize_with_labels(tokenizer, texts, gold, max_length, task.label2id)["labels"]
    true_tags = [[task.id2label[i] for i in row if i != -100] for row in true_ids]
    metrics["seqeval"] = seqeval_scores(true_tags, predicted_tags)
    return metrics, predicted
