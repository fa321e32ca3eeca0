"""Shared fixtures. Nothing here touches the network: HF_HUB_OFFLINE=1 is set before any test runs."""

import importlib.util
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DATA = ROOT / "data" / "dataset.xlsx"
CHALLENGE_DATA = ROOT / "data" / "challenge.xlsx"


def load_script(relative_path: str):
    """Import a numbered script (e.g. model_train/3_modern_bert_finetune.py) as a module."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem.replace("-", "_"), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """160 rows of the shipped dataset, balanced by label, as a CSV."""
    frame = pd.read_excel(SHIPPED_DATA, keep_default_na=False)
    sample = frame.groupby("label", group_keys=False).sample(80, random_state=0)
    path = tmp_path_factory.mktemp("data") / "small.csv"
    sample.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory, small_data) -> Path:
    """A 2-layer random-init ModernBERT with a BPE tokenizer trained on the small data."""
    builder = load_script("model_train/random_init_model.py")
    out = tmp_path_factory.mktemp("tiny-modernbert")
    texts = pd.read_csv(small_data, keep_default_na=False)["text"].tolist()
    builder.build_random_modernbert(out, texts, size="tiny", tokenizer_vocab=400)
    return out


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, tiny_modernbert, small_data) -> tuple[Path, dict]:
    """Step 3 run end to end on the tiny model: (output dir, returned results)."""
    finetune = load_script("model_train/3_modern_bert_finetune.py")
    out = tmp_path_factory.mktemp("run") / "guardrail"
    results = finetune.main(
        [
            "--model",
            str(tiny_modernbert),
            "--data",
            str(small_data),
            "--output-dir",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "16",
        ]
    )
    return out, results
