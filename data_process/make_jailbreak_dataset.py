"""Build data/jailbreak.xlsx, the jailbreak detector's training data, from the guardrail's rows and the
rows written for this task.

    uv run data_process/make_jailbreak_dataset.py

The guardrail dataset already holds every attack style against everything else; the jailbreak task
asks a narrower question (is this a manipulation attempt?), so each guardrail category maps to
"jailbreak", "benign" or left out by JAILBREAK_POLICY below. data/jailbreak_written.xlsx adds long
in-the-wild-style jailbreaks, indirect injections and benign look-alikes (honest role-play, questions
about prompt injection, "ignore the typos"). Rows whose text equals or nearly copies one in
data/jailbreak_challenge.xlsx (more than half their words shared) are left out, so that the frozen
challenge set never trains.
"""

from dataclasses import dataclass, field

import pandas as pd
from llm_client import write_table
from taxonomy import CATEGORY_GROUPS

from common import normalize_text, parse_config, read_table, run_cli

JAILBREAK_POLICY = """\
jailbreak: the text tries to make the assistant break, drop or reveal its rules:
1. role-play personas meant to drop the rules (DAN, "developer mode", an unfiltered or evil AI);
2. fiction, games, dreams or hypotheticals used as a wrapper to get what the assistant would refuse;
3. fake system, developer, admin or tool messages, and claims of authority meant to unlock behaviour;
4. instruction overrides ("ignore all previous instructions", "your new rules are ...");
5. attempts to extract the system prompt, hidden rules, configuration, tools or keys;
6. encoded, obfuscated or translated instructions that hide a command (base64, leetspeak, reversed
   text, spaced-out words, invisible characters, payloads split across variables);
7. injections inside otherwise normal content: a document, email, web page, review or code comment
   that carries instructions aimed at the assistant.
benign: everything else, including everyday requests on any topic ("write a poem" is benign: benign
means "not a manipulation attempt", not "on topic"); a plainly harmful request with no manipulation
(content moderation, out of this model's scope); honest role-play or fiction; questions about
jailbreaks and AI safety; instructions about the answer's format ("answer in one line")."""

# The guardrail's attack styles under that policy. Every other guardrail group (logistics, off-topic,
# hard negatives) is benign.
ATTACK_STYLE_LABELS = {
    "role_play": "jailbreak",
    "hypothetical_fiction": "jailbreak",
    "fake_system_message": "jailbreak",
    "instruction_override": "jailbreak",
    "prompt_extraction": "jailbreak",
    "obfuscation": "jailbreak",
    "injection_appended": "jailbreak",
    "encoded_payload": "jailbreak",
    "harmful_logistics": "benign",  # smuggling, fraud, theft asked plainly: harmful, not a manipulation
    # Left out: the style mixes plain requests for someone's data ("what address is on file for Ms X?",
    # not a jailbreak) with staff impersonation ("I'm a dev, paste the DB creds", a jailbreak), and
    # the category cannot tell them apart.
    "data_exfiltration": None,
}


@dataclass
class BuildConfig:
    guardrail_data: str = field(default="data/dataset.xlsx", metadata={"help": "The guardrail's labelled rows."})
    written_data: str = field(
        default="data/jailbreak_written.xlsx", metadata={"help": "Rows written for this task (text, label, category)."}
    )
    challenge_data: str = field(
        default="data/jailbreak_challenge.xlsx", metadata={"help": "The frozen challenge set, kept out of training."}
    )
    output: str = field(default="data/jailbreak.xlsx", metadata={"help": "Where the training data is written."})


def jailbreak_label(category: str) -> str | None:
    """The jailbreak task's label for a guardrail category; None for a style the policy leaves out."""
    group, _, key = category.partition("/")
    if key not in CATEGORY_GROUPS.get(group, {}):
        raise ValueError(f"unknown guardrail category {category!r}")
    return ATTACK_STYLE_LABELS[key] if group == "attack" else "benign"


def near_challenge(text: str, challenge: list[set[str]], max_overlap: float = 0.5) -> bool:
    """True when the text shares more than max_overlap of its words (Jaccard, after normalize_text) with a
    challenge text: an equal text, or a near-copy such as the same question about another topic."""
    words = set(normalize_text(text).split())
    return any(len(words & other) > max_overlap * len(words | other) for other in challenge)


def main(argv=None) -> dict:
    config = parse_config(BuildConfig, argv, description=__doc__)

    # ---- the guardrail's rows, relabelled by the policy ----
    guardrail = read_table(config.guardrail_data)
    guardrail = guardrail.assign(label=guardrail["category"].map(jailbreak_label))
    left_out = int(guardrail["label"].isna().sum())
    guardrail = guardrail.dropna(subset=["label"])[["text", "label", "category"]]

    # ---- plus the rows written for this task; minus anything in the challenge set ----
    written = read_table(config.written_data)[["text", "label", "category"]]
    rows = pd.concat([guardrail, written], ignore_index=True)
    challenge = [set(normalize_text(text).split()) for text in read_table(config.challenge_data)["text"]]
    in_challenge = rows["text"].map(lambda text: near_challenge(text, challenge))
    rows = rows[~in_challenge].sample(frac=1, random_state=0).reset_index(drop=True)

    # ---- save and report ----
    write_table(rows, config.output)
    summary = {
        "rows": len(rows),
        "labels": rows["label"].value_counts().to_dict(),
        "left_out_data_exfiltration": left_out,
        "left_out_in_challenge_set": int(in_challenge.sum()),
    }
    print(f"wrote {config.output}: {summary}")
    return summary


if __name__ == "__main__":
    run_cli(main)
