"""A decision threshold for a binary task, chosen on the validation split and saved with the model.

argmax allows a query when P(allow) > 0.5, but for a guardrail a false allow (an attack reaching the
LLM) costs more than a false block. Step 4 picks the threshold on the validation scores that step 3
wrote, for a target false-allow rate (or false-block rate), and reports both rates on the test split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

THRESHOLD_FILE = "threshold.json"


def rates(scores: np.ndarray, allowed: np.ndarray, threshold: float) -> dict:
    """False-allow rate (blocked-class rows with score >= threshold) and false-block rate (allowed-class
    rows below it)."""
    allow = scores >= threshold
    return {
        "false_allow_rate": float(allow[~allowed].mean()) if (~allowed).any() else None,
        "false_block_rate": float((~allow)[allowed].mean()) if allowed.any() else None,
    }


def choose_threshold(scores: np.ndarray, allowed: np.ndarray, max_false_allow=None, max_false_block=None) -> float:
    """The threshold on P(allow) that meets the target on these rows.

    With max_false_allow: the lowest threshold whose false-allow rate is within it (the fewest false
    blocks that the target permits). With max_false_block: the highest threshold whose false-block rate
    is within it (the fewest false allows).
    """
    candidates = np.unique(np.append(scores, np.nextafter(scores.max(), np.inf)))  # ascending
    if max_false_allow is not None:
        return float(next(t for t in candidates if rates(scores, allowed, t)["false_allow_rate"] <= max_false_allow))
    return float(next(t for t in candidates[::-1] if rates(scores, allowed, t)["false_block_rate"] <= max_false_block))


def detection_metrics(scores: np.ndarray, positive: np.ndarray, false_positive_rates=(0.01, 0.05)) -> dict:
    """For a detector (the jailbreak task): ROC AUC, and the recall it reaches when at most a given share
    of negatives is flagged. Flagging at P(positive) >= t is the allow rule above with the positive
    class in the allow role, so its "false allow" rate is the false-positive rate."""
    from sklearn.metrics import roc_auc_score

    result = {"roc_auc": float(roc_auc_score(positive, scores))}
    for target in false_positive_rates:
        threshold = choose_threshold(scores, positive, max_false_allow=target)
        measured = rates(scores, positive, threshold)
        result[f"recall_at_fpr_{target:g}"] = {
            "threshold": threshold,
            "recall": 1 - measured["false_block_rate"],
            "false_positive_rate": measured["false_allow_rate"],
        }
    return result


def save_threshold(model_dir: str | Path, record: dict) -> None:
    Path(model_dir, THRESHOLD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def load_threshold(model_dir: str | Path) -> dict | None:
    path = Path(model_dir, THRESHOLD_FILE)
    return json.loads(path.read_text()) if path.is_file() else None


def plot_curves(scores: np.ndarray, allowed: np.ndarray, threshold: float, path: Path, title: str) -> None:
    """Precision-recall and ROC curves of the allow class on these rows, with the chosen threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    precision, recall, _ = precision_recall_curve(allowed, scores)
    false_allow, true_allow, _ = roc_curve(allowed, scores)
    at = scores >= threshold
    point_precision = allowed[at].mean() if at.any() else 1.0
    point_recall = at[allowed].mean()
    point_false_allow = at[~allowed].mean()
    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_pr.plot(recall, precision)
    ax_pr.plot(point_recall, point_precision, "o", color="tab:red", label=f"threshold {threshold:.3f}")
    ax_pr.set(xlabel="recall of allowed queries", ylabel="precision of allowed queries", title="Precision-recall")
    ax_roc.plot(false_allow, true_allow)
    ax_roc.plot(point_false_allow, point_recall, "o", color="tab:red", label=f"threshold {threshold:.3f}")
    ax_roc.set(xlabel="false-allow rate", ylabel="allowed queries let through", title="ROC")
    for ax in (ax_pr, ax_roc):
        ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
