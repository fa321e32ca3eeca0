"""Render data/pii_templates.jsonl into data/pii.jsonl, the PII task's training data, with fake values.

    uv run data_process/make_pii_dataset.py
    uv run data_process/make_pii_dataset.py --presidio synth_dataset_v2.json --output runs/pii_with_presidio.jsonl

Each template is a logistics support message with placeholders ({PERSON}, {PHONE_NUMBER}, ...); every
placeholder is filled by Faker in one of several locales (so names and addresses carry accents), and
its exact character span is recorded. The same seed gives the same file. Every sentence keeps its
template's id, so that step 3 splits by template: no template feeds both train and test.

--presidio adds Presidio's own synthetic sentences (their format, converted to ours) to the output,
for training on both; this project does not ship them.
"""

import json
import random
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from common import PII_TYPES, UserError, parse_config, run_cli, write_json
from model_train.spans import read_span_file

PLACEHOLDER = re.compile(r"\{([A-Z_]+)\}")
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "sv_SE", "es_ES", "nl_NL")  # it_IT: its city list is unordered
TITLES = ("Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "Mr", "Mrs", "Dr", "Miss", "Mx.")
# Nationalities, religious and political groups (Presidio's NRP), written for this project.
NRP_VALUES = (
    "German", "Swedish", "Nigerian", "Brazilian", "Japanese", "Canadian", "Polish", "Indian", "Mexican",
    "Irish", "Vietnamese", "Kenyan", "Turkish", "Filipino", "Ukrainian", "Moroccan", "Chilean", "Korean",
    "Catholic", "Protestant", "Muslim", "Jewish", "Hindu", "Buddhist", "Sikh", "Orthodox Christian",
    "Democrat", "Republican", "Social Democrat", "Green Party", "Conservative", "Labour",
)  # fmt: skip
DATE_FORMATS = ("%d %B %Y", "%m/%d/%Y", "%Y-%m-%d", "%d.%m.%Y", "%B %d", "%A %d %B", "%d/%m/%Y %H:%M", "%b %d, %Y")


@dataclass
class RenderConfig:
    templates: str = field(default="data/pii_templates.jsonl", metadata={"help": "Templates, one JSON per line."})
    output: str = field(default="data/pii.jsonl", metadata={"help": "Where the rendered sentences go."})
    per_template: int = field(default=12, metadata={"help": "Sentences rendered from each template."})
    seed: int = field(default=20261202, metadata={"help": "Seed of the fake values; the same seed, the same file."})
    presidio: str | None = field(
        default=None, metadata={"help": "Also add Presidio's synthetic set (its JSON file) to the output."}
    )


def fake_value(kind: str, fake, rng: random.Random) -> str:
    """One fake value of an entity type, in the locale of `fake`; formats vary as people type them."""
    if kind == "PERSON":
        return fake.first_name() if rng.random() < 0.25 else fake.name()
    if kind == "TITLE":
        return rng.choice(TITLES)
    if kind == "PHONE_NUMBER":
        return fake.phone_number()
    if kind == "EMAIL_ADDRESS":
        return fake.email() if rng.random() < 0.6 else fake.free_email()
    if kind == "CREDIT_CARD":
        number = fake.credit_card_number()
        return " ".join(number[i : i + 4] for i in range(0, len(number), 4)) if rng.random() < 0.4 else number
    if kind == "IBAN_CODE":
        iban = fake.iban()
        return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.5 else iban
    if kind == "STREET_ADDRESS":
        return fake.street_address().replace("\n", ", ")
    if kind == "ZIP_CODE":
        return fake.postcode()
    if kind == "GPE":
        return fake.city() if rng.random() < 0.7 else fake.country()
    if kind == "DATE_TIME":
        # fixed bounds: relative ones ("-2y") would make the file depend on the day it is rendered
        return fake.date_time_between(datetime(2024, 1, 1), datetime(2027, 12, 31)).strftime(rng.choice(DATE_FORMATS))
    if kind == "AGE":
        return str(rng.randint(16, 95))
    if kind == "ORGANIZATION":
        return fake.company()
    if kind == "NRP":
        return rng.choice(NRP_VALUES)
    if kind == "DOMAIN_NAME":
        return fake.domain_name()
    if kind == "IP_ADDRESS":
        return fake.ipv6() if rng.random() < 0.2 else fake.ipv4()
    if kind == "US_SSN":
        return fake.ssn() if rng.random() < 0.7 else fake.ssn().replace("-", "")
    if kind == "US_DRIVER_LICENSE":
        return fake.bothify(
            rng.choice(("?#######", "#########", "?###-####-####", "??######")), letters="ABCDEFGHJKLMNPRSTWY"
        )
    raise ValueError(f"no fake values for {kind!r}")


def render(template: str, fakes: dict, rng: random.Random) -> tuple[str, list[dict]]:
    """The template with every placeholder filled, and the exact span of each filled value."""
    fake = fakes[rng.choice(LOCALES)]
    text, spans, last = "", [], 0
    for match in PLACEHOLDER.finditer(template):
        text += template[last : match.start()]
        value = fake_value(match.group(1), fake, rng)
        spans.append({"start": len(text), "end": len(text) + len(value), "label": match.group(1)})
        text += value
        last = match.end()
    return text + template[last:], spans


def main(argv=None) -> dict:
    from faker import Faker

    config = parse_config(RenderConfig, argv, description=__doc__)
    path = Path(config.templates)
    if not path.is_file():
        raise UserError(f"templates file {str(path)!r} not found; pass --templates.")

    # ---- templates: every placeholder must be one of the task's entity types ----
    templates = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for template in templates:
        unknown = set(PLACEHOLDER.findall(template["template"])) - set(PII_TYPES)
        if unknown:
            raise UserError(f"template {template['template_id']} uses unknown placeholders {sorted(unknown)}.")

    # ---- render each template per_template times, with one seeded Faker per locale ----
    rng = random.Random(config.seed)
    fakes = {locale: Faker(locale) for locale in LOCALES}
    for i, fake in enumerate(fakes.values()):
        fake.seed_instance(config.seed + i)
    rows = []
    for template in templates:
        seen = set()
        for _ in range(config.per_template):
            text, spans = render(template["template"], fakes, rng)
            if text not in seen:  # a template without placeholders renders once
                seen.add(text)
                rows.append({"text": text, "spans": spans, "template_id": template["template_id"]})

    # ---- optionally Presidio's own sentences, converted to our format ----
    if config.presidio:
        presidio = read_span_file(config.presidio, PII_TYPES)
        rows += presidio.to_dict(orient="records")

    # ---- save ----
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    counts = {kind: sum(s["label"] == kind for row in rows for s in row["spans"]) for kind in PII_TYPES}
    summary = {"rows": len(rows), "templates": len({row["template_id"] for row in rows}), "entities": counts}
    write_json(output.with_suffix(".summary.json"), summary)
    print(f"wrote {output}: {summary['rows']} sentences from {summary['templates']} templates; entities {counts}")
    return summary


if __name__ == "__main__":
    run_cli(main)
