"""Surface-cue probe: can the label be guessed without reading a single word?

    uv run data_process/cue_probe.py                        # data/dataset.xlsx
    uv run data_process/cue_probe.py --data mine.xlsx       # any labelled file

A gradient-boosting classifier sees only the shape of each query: word and character counts,
punctuation counts, casing, digits, line breaks and non-ASCII characters (no words at all). It is
cross-validated on the data. If it beats always predicting the majority label by much, the groups
differ in form as well as meaning, and a fine-tuned model can learn the form instead ("ends in '?'
means logistics", "long means attack"). A well-mixed dataset keeps the gap small; the data tests
hold the shipped dataset to a gap of at most 5 points.

Prints the cross-validated accuracy, the majority baseline, the gap and the mean of each feature
per category group; writes the same as JSON (--output).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from common import TASKS, parse_config, read_table, run_cli, validate_frame, write_json

FEATURES = (
    "characters",
    "words",
    "question_marks",
    "exclamation_marks",
    "full_stops",
    "commas",
    "other_punctuation",  # : ; - ( ) " ' / and dashes
    "ends_with_question_mark",
    "starts_upper_case",
    "upper_case_share",  # share of letters that are capitals
    "all_lower_case",
    "digits",
    "line_breaks",
    "non_ascii",
)
OTHER_PUNCTUATION = set(":;-()\"'/\u2013\u2014")


@dataclass
class ProbeConfig:
    data: str = field(default="data/dataset.xlsx", metadata={"help": "Labelled guardrail file (.xlsx, .csv, .jsonl)."})
    folds: int = field(default=5, metadata={"help": "Cross-validation folds."})
    seed: int = field(default=0, metadata={"help": "Seed of the folds and the classifier."})
    output: str | None = field(default=None, metadata={"help": "Write the results here as JSON (default: print only)."})


def surface_features(text: str) -> list[float]:
    """The shape of a query, in the order of FEATURES; no word is looked at."""
    stripped = text.strip()
    letters = [c for c in text if c.isalpha()]
    return [
        len(text),
        len(text.split()),
        text.count("?"),
        text.count("!"),
        text.count("."),
        text.count(","),
        sum(c in OTHER_PUNCTUATION for c in text),
        stripped.endswith("?"),
        stripped[:1].isupper(),
        sum(c.isupper() for c in letters) / max(1, len(letters)),
        bool(letters) and not any(c.isupper() for c in letters),
        sum(c.isdigit() for c in text),
        text.count("\n"),
        sum(not c.isascii() for c in text),
    ]


def feature_table(texts: list[str]) -> pd.DataFrame:
    """One row of FEATURES per text."""
    return pd.DataFrame([surface_features(t) for t in texts], columns=FEATURES, dtype=float)


def probe(features: pd.DataFrame, labels: np.ndarray, folds: int, seed: int) -> dict:
    """Cross-validated accuracy of a surface-feature model against the majority baseline."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    scores = cross_val_score(
        HistGradientBoostingClassifier(random_state=seed),
        features.to_numpy(),
        labels,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
    )
    majority = float(np.bincount(labels).max() / len(labels))
    accuracy = float(scores.mean())
    return {
        "accuracy": accuracy,
        "majority_baseline": majority,
        "gap": accuracy - majority,
        "fold_accuracies": scores.tolist(),
    }


def main(argv=None) -> dict:
    config = parse_config(ProbeConfig, argv, description=__doc__)
    frame = validate_frame(read_table(config.data), TASKS["guardrail"], "text", "label")

    features = feature_table(frame["text"].tolist())
    results = probe(features, frame["label_id"].to_numpy(), config.folds, config.seed)
    results["data"], results["n"] = config.data, len(frame)
    if "category" in frame.columns:
        means = features.groupby(frame["category"].str.partition("/")[0].to_numpy()).mean()
        results["feature_means_by_group"] = means.round(3).to_dict(orient="index")
        print(means.T.round(2).to_string())

    print(
        f"\nsurface-cue probe on {len(frame)} rows ({config.folds}-fold CV): accuracy {results['accuracy']:.4f}, "
        f"majority baseline {results['majority_baseline']:.4f}, gap {100 * results['gap']:+.1f} points"
    )
    if config.output:
        write_json(config.output, results)
    return results


if __name__ == "__main__":
    run_cli(main)
