"""Step 5 exports the tiny ModernBERT to ONNX fp32 and int8 with parity checks; step 4 runs and times the exports."""

import json
import shutil

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def exported(trained_tiny, tmp_path_factory):
    out, _ = trained_tiny
    model = tmp_path_factory.mktemp("onnx") / "guardrail"
    shutil.copytree(out, model)
    results = load_script("inference/5_export_onnx.py").main(["--model", str(model)])
    return model, results


def test_export_writes_fp32_and_int8_models_that_match_pytorch(exported):
    model, results = exported
    assert results["passed"] and not results["failures"]
    assert results["checks"]["fp32_max_probability_difference"] <= 1e-4
    assert results["checks"]["int8_agreement_with_fp32"] >= 0.995
    assert results["int8_fp32_matmuls"] >= 2  # the two feed-forward output projections of the 2 layers
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json", "config.json", "export_results.json"):
        assert (model / "onnx" / name).is_file()
    assert json.loads((model / "onnx" / "config.json").read_text())["id2label"] == {"0": "False", "1": "True"}


def test_exported_model_takes_any_batch_size_and_length(exported):
    import backends

    model, _ = exported
    onnx = backends.onnx_classifier(model, "onnx")
    for texts in (["hi"], ["where is my parcel " * 40, "x", "ship 3 kg to lyon"]):
        probabilities = onnx.probabilities(texts, batch_size=2)
        assert probabilities.shape == (len(texts), 2)
        assert abs(probabilities.sum(axis=1) - 1).max() < 1e-6


def test_failed_parity_exits_1(exported):
    model, _ = exported
    with pytest.raises(SystemExit) as exit_info:
        load_script("inference/5_export_onnx.py").main(["--model", str(model), "--fp32-tolerance", "1e-12"])
    assert exit_info.value.code == 1
    assert json.loads((model / "onnx" / "export_results.json").read_text())["passed"] is False


def test_an_int8_recipe_that_drifts_falls_back_to_the_safer_one(exported):
    # An agreement bar no recipe can meet makes step 5 try every recipe, fastest first, and fail.
    model, _ = exported
    with pytest.raises(SystemExit):
        load_script("inference/5_export_onnx.py").main(["--model", str(model), "--min-int8-agreement", "1.01"])
    results = json.loads((model / "onnx" / "export_results.json").read_text())
    recipes = [attempt["recipe"] for attempt in results["int8_attempts"]]
    assert recipes == ["narrowing MatMuls in fp32", "narrowing and square MatMuls in fp32, 7-bit activations"]
    assert results["int8_attempts"][1]["fp32_matmuls"] > results["int8_attempts"][0]["fp32_matmuls"]
    assert results["int8_recipe"] == recipes[-1] and results["passed"] is False
    load_script("inference/5_export_onnx.py").main(["--model", str(model)])  # leave a passing export behind


def test_step4_runs_the_int8_model_and_compares_every_backend(exported, tmp_path):
    model, _ = exported
    inference = load_script("inference/4_inference.py")
    timing = ["--timed-runs", "10", "--warmup-runs", "2", "--throughput-batches", "1", "--images-dir", str(tmp_path)]
    results = inference.main(["--model", str(model), "--backend", "onnx-int8", *timing])
    assert results["backend"] == "onnx-int8" and results["n"] == 16
    assert 0 < results["tokens"]["real"] <= results["tokens"]["padded"]

    comparison = inference.main(["--model", str(model), "--compare-backends", *timing])["comparison"]
    rows = comparison["backends"]
    assert list(rows) == ["transformers pipeline", "torch", "onnx", "onnx-int8"]
    assert rows["transformers pipeline"]["speedup_16_tokens"] == 1.0
    assert all(0 < row["batch1_ms_16_tokens"]["p50"] <= row["batch1_ms_16_tokens"]["p99"] for row in rows.values())
    assert rows["onnx"]["accuracy"] == rows["torch"]["accuracy"]  # the same predictions, fp32 both
    assert (model / "backend_comparison.json").is_file()
    assert (
        comparison["compute_floor_fp32"]["matmul_gflops_fp32"] > 0
        and comparison["compute_floor_fp32"]["ms_16_tokens"] > 0
    )
