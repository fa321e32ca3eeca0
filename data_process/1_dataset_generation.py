"""Step 1: generate guardrail queries with an LLM, balanced over the labelling taxonomy.

    uv run data_process/1_dataset_generation.py                 # ~2,000 queries with DeepSeek V3 on Fireworks
    uv run data_process/1_dataset_generation.py --dry-run       # the plan's size and token estimate; no API calls

The work is planned up front as numbered requests (seeded), each asking for `--batch-size`
queries of one category of taxonomy.CATEGORY_GROUPS, every query with its own persona, register
and length. Labels come from the category (taxonomy.category_label), never from the LLM, so attacks
are False even when they are wrapped in a logistics question. Each finished request is appended
to a JSONL journal at once; rerunning the same command after Ctrl-C or kill -9 skips the finished
requests and retries the failed ones. Writes data/questions_sample_2k.xlsx (text, label, category,
source, request_id, item) and data/generation_summary.json.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import llm_client
import pandas as pd
from taxonomy import CATEGORY_GROUPS, category_label

import common
from common import UserError, normalize_text

DEFAULT_MODEL = "accounts/fireworks/models/deepseek-v3"


@dataclass
class GenerationConfig(llm_client.ProviderConfig):
    model: str | None = field(
        default=None, metadata={"help": f"Generator model. Default: `model` from the env file, else {DEFAULT_MODEL}."}
    )
    n: int = field(default=2000, metadata={"help": "Queries to request in total (the blog's questions_sample_2k)."})
    batch_size: int = field(default=10, metadata={"help": "Queries asked for in one request."})
    group_shares: str = field(
        default="logistics=0.5,off_topic=0.2,hard_negative=0.15,attack=0.15",
        metadata={"help": "Share of queries per category group; logistics is the True class."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the plan (categories, personas, registers, lengths)."})
    json_mode: bool = field(
        default=True,
        metadata={"help": "Send response_format=json_object; use --no-json-mode where the provider lacks it."},
    )
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; high for varied text."})
    max_tokens: int = field(default=3000, metadata={"help": "Completion-token cap per request."})
    min_chars: int = field(default=3, metadata={"help": "Shortest accepted query, in characters."})
    max_chars: int = field(default=1000, metadata={"help": "Longest accepted query, in characters."})
    min_english_ratio: float = field(
        default=0.9,
        metadata={
            "help": "Least share of ASCII among a query's letters. This only rejects queries written in "
            "non-Latin scripts (Chinese, Cyrillic, Arabic, ...): Spanish or German in Latin letters pass. "
            "It is not a language identifier, on purpose: tried on the shipped data, one rejected short "
            "English queries and the translated attacks that the taxonomy asks for."
        },
    )
    output: str = field(
        default="data/questions_sample_2k.xlsx", metadata={"help": "Generated dataset (.xlsx or .csv)."}
    )
    journal: str = field(
        default="data/questions_sample_2k.jsonl", metadata={"help": "Resumable journal of finished requests."}
    )
    summary_json: str = field(
        default="data/generation_summary.json", metadata={"help": "Machine-readable results of the run."}
    )
    price_input_per_million: float = field(
        default=0.90,
        metadata={"help": "USD per million prompt tokens, for the cost estimate (Fireworks DeepSeek V3 list price)."},
    )
    price_output_per_million: float = field(
        default=0.90, metadata={"help": "USD per million completion tokens, for the cost estimate."}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Print the plan's size and estimated tokens and cost, then stop."}
    )


# ---------------------------------------------------------------------------
# The plan: numbered requests, each one category and a spec per query.
# ---------------------------------------------------------------------------

PERSONAS = [
    "online shopper waiting for an order",
    "grandparent new to online shopping",
    "university student",
    "small e-commerce seller",
    "procurement manager",
    "supply-chain analyst",
    "freight forwarder",
    "warehouse supervisor",
    "software developer",
    "teenager",
    "non-native English speaker",
    "office assistant sending documents",
    "owner of a small import business",
    "traveller abroad",
    "customer-service agent at a retailer",
    "security researcher testing the bot",
]
REGISTERS = [
    "terse fragment, no punctuation",
    "polite and complete",
    "rambling, several sentences",
    "angry and impatient",
    "all lowercase with typos",
    "business-formal like an email",
    "casual chat with abbreviations",
    "confused and unsure of the terms",
]
# Length bands (words) and how often each is asked for; most real chat messages are short.
LENGTHS = {"2-6 words": 0.2, "7-15 words": 0.35, "16-35 words": 0.3, "36-80 words": 0.15}
GROUP_INSTRUCTIONS = {
    "logistics": "Each message is a genuine question or request that the company's support would handle.",
    "off_topic": "Each message has nothing to do with shipping; people type such things into any chat widget.",
    "hard_negative": "Each message looks related to shipping or delivery by its words but is not a request this "
    "company's support handles.",
    "attack": "These are red-team inputs that teach the guardrail what to block; all of them will be blocked. Write "
    "the attacker's message as typed, not any harmful content itself.",
}
SYSTEM_PROMPT = (
    "You write realistic test data for a text classifier that guards the support chat of a parcel, freight and "
    "logistics company. Write exactly what people type into the chat widget, in English, one message per item. "
    "Reply with JSON only."
)


def parse_shares(text: str) -> dict[str, float]:
    try:
        shares = {key.strip(): float(value) for key, value in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise UserError(
            f"--group-shares {text!r} is not like 'logistics=0.5,off_topic=0.2,...'; fix its format."
        ) from None
    if set(shares) - set(CATEGORY_GROUPS) or sum(shares.values()) <= 0:
        raise UserError(f"--group-shares must name groups from {list(CATEGORY_GROUPS)} with positive shares.")
    return {group: share / sum(shares.values()) for group, share in shares.items()}


def plan_requests(config: GenerationConfig) -> list[dict]:
    """Deterministic numbered requests: groups get their share of queries, cycling over their keys."""
    if config.n < 1 or config.batch_size < 1:
        raise UserError("--n and --batch-size must be positive integers.")
    rng = random.Random(config.seed)
    shares = parse_shares(config.group_shares)
    quotas = {group: int(config.n * share) for group, share in shares.items()}
    for group in sorted(shares, key=lambda g: config.n * shares[g] % 1, reverse=True)[
        : config.n - sum(quotas.values())
    ]:
        quotas[group] += 1  # largest remainders, so the quotas sum to n
    requests = []
    for group, quota in quotas.items():
        keys = rng.sample(sorted(CATEGORY_GROUPS[group]), len(CATEGORY_GROUPS[group]))
        for batch_index, start in enumerate(range(0, quota, config.batch_size)):
            size = min(config.batch_size, quota - start)
            specs = [
                {
                    "persona": rng.choice(PERSONAS),
                    "register": rng.choice(REGISTERS),
                    "length": rng.choices(list(LENGTHS), weights=list(LENGTHS.values()))[0],
                }
                for _ in range(size)
            ]
            requests.append({"category": f"{group}/{keys[batch_index % len(keys)]}", "specs": specs})
    rng.shuffle(requests)  # a partial run then covers every group
    return [{"request_id": i, **request} for i, request in enumerate(requests)]


def build_messages(request: dict) -> list[dict]:
    group, _, key = request["category"].partition("/")
    specs = "\n".join(f"{i}. {s['persona']}; {s['register']}; {s['length']}" for i, s in enumerate(request["specs"], 1))
    k = len(request["specs"])
    user = (
        f'Write exactly {k} different chat messages for the category "{request["category"]}": '
        f"{CATEGORY_GROUPS[group][key]}.\n{GROUP_INSTRUCTIONS[group]}\n"
        f"Message i follows spec i (who writes it; tone; length):\n{specs}\n"
        "Vary openings and concrete details (tracking or order numbers, cities, weights, dates, prices); no numbering, "
        f'no two messages alike.\nReturn a JSON object {{"queries": ["...", ...]}} with exactly {k} strings.'
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# ---------------------------------------------------------------------------
# One request: ask, parse, validate.
# ---------------------------------------------------------------------------


def reject_reason(item, config: GenerationConfig) -> str | None:
    """Why a generated item is not a usable query, or None if it is."""
    text = item.get("text") if isinstance(item, dict) else item
    if not isinstance(text, str):
        return "not_a_string"
    text = text.strip()
    if not text:
        return "empty"
    if len(text) < config.min_chars:
        return "too_short"
    if len(text) > config.max_chars:
        return "too_long"
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(c.isascii() for c in letters) / len(letters) < config.min_english_ratio:
        return "not_english"
    return None


def generate(client, model: str, request: dict, config: GenerationConfig) -> dict:
    """Rows and rejects for one request; asks again (up to --parse-retries) when the reply holds no JSON list."""
    wanted, usage, items = len(request["specs"]), Counter(), None
    for _ in range(1 + config.parse_retries):
        reply = llm_client.complete_chat(
            client, model, build_messages(request), config.max_tokens, config.temperature, config.json_mode
        )
        usage.update(reply["usage"])
        data = llm_client.extract_json(reply["answer"]) if reply["finish_reason"] != "length" else None
        items = data.get("queries") if isinstance(data, dict) else data
        if isinstance(items, list):
            break
    if not isinstance(items, list):
        reason = "truncated_reply" if reply["finish_reason"] == "length" else "unparseable_reply"
        return {"rows": [], "rejected": {reason: wanted}, "surplus": 0, "usage": dict(usage)}
    rows, rejected = [], Counter()
    for index, item in enumerate(items[:wanted]):  # items beyond the asked number were not requested: ignored
        reason = reject_reason(item, config)
        if reason:
            rejected[reason] += 1
            continue
        text = (item["text"] if isinstance(item, dict) else item).strip()
        rows.append(
            {
                "item": index,
                "text": text,
                "category": request["category"],
                "label": category_label(request["category"]),
                "source": f"generated:{model}",
            }
        )
    if len(items) < wanted:
        rejected["missing"] = wanted - len(items)
    return {"rows": rows, "rejected": dict(rejected), "surplus": max(0, len(items) - wanted), "usage": dict(usage)}


# ---------------------------------------------------------------------------
# Output: de-duplicate the journal into the dataset, and account for every row.
# ---------------------------------------------------------------------------


def build_dataset(finished: dict[int, dict]) -> tuple[pd.DataFrame, dict]:
    seen_exact, seen_near, records, duplicates = set(), set(), [], Counter()
    for request_id in sorted(finished):
        for row in sorted(finished[request_id]["rows"], key=lambda r: r["item"]):
            near = normalize_text(row["text"])
            if row["text"] in seen_exact or near in seen_near:
                duplicates["exact" if row["text"] in seen_exact else "near"] += 1
                continue
            seen_exact.add(row["text"])
            seen_near.add(near)
            records.append(
                {
                    "text": row["text"],
                    "label": row["label"],
                    "category": row["category"],
                    "source": row["source"],
                    "request_id": request_id,
                    "item": row["item"],
                }
            )
    columns = ["text", "label", "category", "source", "request_id", "item"]
    return pd.DataFrame(records, columns=columns), {"exact": duplicates["exact"], "near": duplicates["near"]}


def account(plan: list[dict], finished: dict[int, dict], duplicates: dict) -> dict:
    """Every requested row is accepted, rejected (by reason) or in a failed request: the three sum to requested."""
    rejected = Counter()
    for entry in finished.values():
        rejected.update(entry["done"]["rejected"])
    failed = [r for r in plan if r["request_id"] not in finished]
    counts = {
        "requests": len(plan),
        "requests_finished": len(finished),
        "requests_failed_after_retries": len(failed),
        "rows_requested": sum(len(r["specs"]) for r in plan),
        "rows_accepted": sum(len(e["rows"]) for e in finished.values()),
        "rows_rejected": dict(sorted(rejected.items())),
        "rows_in_failed_requests": sum(len(r["specs"]) for r in failed),
        "duplicates_removed": duplicates,
        "surplus_items_ignored": sum(e["done"].get("surplus", 0) for e in finished.values()),
    }
    counts["rows_written"] = counts["rows_accepted"] - sum(duplicates.values())
    assert (
        counts["rows_requested"] == counts["rows_accepted"] + sum(rejected.values()) + counts["rows_in_failed_requests"]
    )
    return counts


def dry_run(plan: list[dict], config: GenerationConfig) -> dict:
    """Approximate tokens for the plan: prompt chars / 4; completions from the asked lengths at ~1.3 tokens/word."""
    prompt_chars = sum(len(m["content"]) for r in plan for m in build_messages(r))
    midpoint_words = {band: sum(map(int, band.split()[0].split("-"))) / 2 for band in LENGTHS}
    # +6 tokens per query for JSON quoting and commas, +10 per reply for the wrapper
    completion = sum(midpoint_words[s["length"]] * 1.3 + 6 for r in plan for s in r["specs"]) + 10 * len(plan)
    usage = {"prompt_tokens": round(prompt_chars / 4), "completion_tokens": round(completion)}
    estimate = {
        "requests": len(plan),
        "rows_requested": sum(len(r["specs"]) for r in plan),
        "prompt_chars": prompt_chars,
        "estimated_usage": usage,
        "estimated_cost_usd": round(
            llm_client.estimate_cost(usage, config.price_input_per_million, config.price_output_per_million), 2
        ),
    }
    print(f"dry run (estimate: tokens ~ chars/4 for prompts, ~1.3 per word for replies): {estimate}")
    return estimate


def main(argv=None) -> dict:
    config = common.parse_config(GenerationConfig, argv, description=__doc__)
    started = time.perf_counter()
    print("config:", json.dumps(llm_client.config_dict(config), indent=2))

    # -- Plan --------------------------------------------------------------
    plan = plan_requests(config)
    print(
        f"plan: {len(plan)} requests, {sum(len(r['specs']) for r in plan)} queries, "
        f"by group {dict(Counter(r['category'].split('/')[0] for r in plan))} (requests)"
    )
    if config.dry_run:
        return dry_run(plan, config)

    # -- Resume: skip requests the journal already holds -------------------
    journal = llm_client.Journal(config.journal, plan)
    finished = journal.load()
    pending = [r for r in plan if r["request_id"] not in finished]
    print(f"journal {config.journal}: {len(finished)} requests done, {len(pending)} to go")

    # -- Generate ------------------------------------------------------------
    client, monitor = llm_client.get_llm_client(config)
    model = llm_client.get_setting(config, config.model, "model", DEFAULT_MODEL)

    def save(request, result):
        journal.append(request["request_id"], result["rows"], **{k: v for k, v in result.items() if k != "rows"})

    try:
        failed = llm_client.run_requests(
            pending, lambda r: generate(client, model, r, config), save, config.concurrency, monitor, desc="generating"
        )
    finally:
        journal.close()
        client.close()

    # -- Save and report -----------------------------------------------------
    finished = journal.load()
    llm_client.check_any_succeeded(finished, failed)
    frame, duplicates = build_dataset(finished)
    llm_client.write_table(frame, config.output)
    usage = llm_client.sum_usage(e["done"] for e in finished.values())
    results = {
        "model": model,
        "output": config.output,
        "accounting": account(plan, finished, duplicates),
        "failures_this_run": failed,
        "retries_this_run": monitor.as_dict(),
        "usage_all_runs": usage,
        "usage_note": llm_client.USAGE_NOTE,
        "estimated_cost_usd": round(
            llm_client.estimate_cost(usage, config.price_input_per_million, config.price_output_per_million), 4
        ),
        "label_balance": {str(k): int(v) for k, v in frame["label"].value_counts().items()},
        "config": llm_client.config_dict(config),
        "run": common.get_run_info(("openai", "pandas"), hardware=False),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    common.write_json(config.summary_json, results)
    for key in ("accounting", "failures_this_run", "retries_this_run", "usage_all_runs", "label_balance"):
        print(f"{key}: {results[key]}")
    print(
        f"estimated cost (list prices {config.price_input_per_million}/{config.price_output_per_million} USD per "
        f"million tokens; an estimate): ${results['estimated_cost_usd']}"
    )
    if len(frame):
        print(frame.sample(min(3, len(frame)), random_state=0)[["text", "label", "category"]].to_string())
    if failed:
        print(f"{sum(failed.values())} requests failed after retries; run the same command again to retry them.")
    print(f"wrote {len(frame)} rows to {config.output}")
    return results


if __name__ == "__main__":
    common.run_cli(main)
