"""model_train/training.py: the config step 3 and LoRA parse, the loss and metrics the Trainer gets, publishing."""

import pytest
import torch

from common import UserError, classification_metrics
from model_train.training import FinetuneArguments, flat_metrics, get_loss_function, parse_args, push_folder


def test_old_flag_names_still_set_the_training_arguments():
    argv = ["--epochs", "3", "--batch-size", "8", "--eval_batch_size", "16", "--warmup-ratio", "0.2"]
    data_args, args = parse_args(FinetuneArguments, argv + ["--no-group-by-length", "--bf16", "auto"])
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.per_device_eval_batch_size) == (3, 8, 16)
    assert args.warmup_steps == 0.2 and args.train_sampling_strategy == "random"
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert data_args.data == "data/dataset.xlsx" and data_args.text_column == "text"


def test_the_task_fills_in_the_output_folder_and_the_metric_for_the_best_epoch():
    data_args, args = parse_args(FinetuneArguments, [])
    assert args.output_dir == "modernbert-llm-router" and args.metric_for_best_model == "f1"
    assert args.train_sampling_strategy == "group_by_length" and args.eval_strategy == "epoch"
    assert args.load_best_model_at_end and args.greater_is_better
    _, args = parse_args(FinetuneArguments, ["--output_dir", "elsewhere", "--metric_for_best_model", "accuracy"])
    assert args.output_dir == "elsewhere" and args.metric_for_best_model == "accuracy"
    with pytest.raises(UserError, match="unknown --task 'nope'"):
        parse_args(FinetuneArguments, ["--task", "nope"])


def test_push_to_hub_is_the_scripts_job_never_the_trainers():
    # The Trainer would push every checkpoint mid-run; the scripts publish once, last.
    data_args, args = parse_args(FinetuneArguments, ["--push-to-hub"])
    assert data_args.push_to_hub is True and args.push_to_hub is False


def test_flat_metrics_are_the_weighted_scores():
    metrics = classification_metrics([1, 1, 1, 0, 0], [1, 1, 0, 0, 1], ("False", "True"))
    assert flat_metrics(metrics) == pytest.approx(
        {"accuracy": 0.6, "f1": 0.6, "f1_macro": 7 / 12, "precision": 0.6, "recall": 0.6}
    )


def test_class_weights_weigh_the_cross_entropy_by_hand():
    assert get_loss_function(None) is None  # the model's own loss
    loss = get_loss_function((1.0, 3.0))
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.8, 0.2]]))  # softmax gives these probabilities back
    labels = torch.tensor([1, 0])
    # weighted mean: (3 * -ln 0.5 + 1 * -ln 0.8) / (3 + 1)
    expected = (3 * -torch.log(torch.tensor(0.5)) + -torch.log(torch.tensor(0.8))) / 4
    assert loss({"logits": logits}, labels).item() == pytest.approx(expected.item())


# ---- publishing ----


def test_push_needs_a_token(monkeypatch, tmp_path):
    monkeypatch.delenv("hf_token", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(UserError, match="set hf_token in .env"):
        push_folder(tmp_path, FinetuneArguments(output_dir=str(tmp_path)), env_file=tmp_path / "no.env")


def test_push_uploads_the_output_folder_with_the_token_from_the_env_file(monkeypatch, tmp_path):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token):
            calls["token"] = token

        def create_repo(self, repo_id, private, exist_ok):
            calls["repo"] = (repo_id, private)
            return type("Repo", (), {"repo_id": f"someone/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["upload"] = (repo_id, folder_path)

    monkeypatch.delenv("hf_token", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / "settings.env").write_text("hf_token=hf_test_token\n")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    _, args = parse_args(FinetuneArguments, ["--output_dir", str(tmp_path / "my-router"), "--hub_private_repo", "true"])
    push_folder(tmp_path / "my-router", args, env_file=tmp_path / "settings.env")
    assert calls == {
        "token": "hf_test_token",
        "repo": ("my-router", True),
        "upload": ("someone/my-router", str(tmp_path / "my-router")),
    }
