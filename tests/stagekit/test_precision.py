"""impl.precision and impl.device: the decisions over a table of devices, the retired impl.bf16 key, fp16's
skipped steps in the NaN stop, and one real fp16 autocast + loss-scaling training step on the CPU."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from pretrain.config import PretrainConfig
from siamese.config import SiameseConfig
from stagekit import device as device_module
from stagekit.callbacks import StopOnNonFiniteLoss, TrainingDiverged
from stagekit.config import REPO_ROOT, load_config
from stagekit.device import (
    MIN_LOSS_SCALE,
    DeviceInfo,
    choose_compile,
    choose_precision,
    choose_tf32,
    skipped_by_loss_scaler,
)
from stagekit.errors import ConfigError
from stagekit.stage_config import training_arguments

H200 = DeviceInfo("cuda", "NVIDIA H200", (9, 0))
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0))
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5))
V100 = DeviceInfo("cuda", "Tesla V100-SXM2-16GB", (7, 0))
P100 = DeviceInfo("cuda", "Tesla P100-PCIE-16GB", (6, 0))
MPS = DeviceInfo("mps", "Apple GPU (MPS)")
CPU = DeviceInfo("cpu", "CPU")

# (device, asked) → (precision, words the reason must hold) or (None, words of the one-line error)
TABLE = [
    (H200, "auto", "bf16", "has bf16 tensor cores"),
    (A100, "auto", "bf16", "compute capability 8.0"),
    (H200, "fp16", "fp16", "loss scaling on"),
    (H200, "fp32", "fp32", "asked for"),
    (T4, "auto", "fp16", "no bf16 ones; loss scaling on"),
    (V100, "auto", "fp16", "compute capability 7.0"),
    (T4, "bf16", None, "impl.precision=fp16"),
    (V100, "bf16", None, "has no bf16 tensor cores"),
    (T4, "fp16", "fp16", "asked for"),
    (T4, "fp32", "fp32", "asked for"),
    (P100, "auto", "fp32", "no tensor cores"),
    (P100, "bf16", None, "impl.precision=fp16"),
    (P100, "fp16", "fp16", "loss scaling on"),
    (MPS, "auto", "fp32", "trains in fp32"),
    (MPS, "bf16", None, "impl.precision=fp16"),
    (CPU, "auto", "fp32", "auto: CPU"),
    (CPU, "fp32", "fp32", "asked for"),
    (CPU, "bf16", None, "needs a GPU"),
    (CPU, "fp16", None, "impl.precision=fp32"),
    (T4, "fp8", None, "is not one of"),
]


@pytest.mark.parametrize(("device", "asked", "precision", "words"), TABLE, ids=lambda v: getattr(v, "name", v))
def test_precision_decision_table(device: DeviceInfo, asked: str, precision: str | None, words: str):
    if precision is None:
        with pytest.raises(ConfigError) as err:
            choose_precision(device, asked)
        message = str(err.value)
        assert message.startswith("config key 'impl.precision'") and words in message and "\n" not in message
    else:
        choice = choose_precision(device, asked)
        assert choice.precision == precision and words in choice.reason
        assert choice.trainer_flags() == {"bf16": precision == "bf16", "fp16": precision == "fp16"}
        assert choice.as_metrics() == {"precision": precision, "precision_reason": choice.reason}


def test_fp16_on_mps_needs_torch_2_8_for_loss_scaling(monkeypatch):
    monkeypatch.setattr("stagekit.device.torch_version", lambda: (2, 7))
    with pytest.raises(ConfigError, match="torch >= 2.8"):
        choose_precision(MPS, "fp16")
    monkeypatch.setattr("stagekit.device.torch_version", lambda: (2, 13))
    assert choose_precision(MPS, "fp16").precision == "fp16"


@pytest.mark.parametrize(
    ("device", "asked", "used", "words"),
    [
        (H200, True, True, "on"),
        (T4, True, True, "on"),
        (P100, True, False, "older than Triton supports"),
        (MPS, True, False, "CUDA only"),
        (CPU, True, False, "CUDA only"),
        (H200, False, False, "impl.compile=false"),
    ],
)
def test_compile_decision(device, asked, used, words):
    assert choose_compile(device, asked)[0] is used and words in choose_compile(device, asked)[1]


def test_training_arguments_on_this_cpu_train_in_fp32_and_refuse_half_precision(tmp_path):
    from transformers import TrainingArguments

    cfg = load_config(
        PretrainConfig, REPO_ROOT / "configs/pretrain/debug.yaml", [f"output_dir={tmp_path}", "impl.precision=auto"]
    )
    args = training_arguments(TrainingArguments, cfg, "cpu", [])
    assert (args.bf16, args.fp16, args.use_cpu) == (False, False, True)
    cfg = load_config(
        PretrainConfig, REPO_ROOT / "configs/pretrain/debug.yaml", [f"output_dir={tmp_path}", "impl.precision=bf16"]
    )
    with pytest.raises(ConfigError, match="impl.precision.*needs a GPU"):
        training_arguments(TrainingArguments, cfg, "cpu", [])


@pytest.mark.parametrize("schema", [PretrainConfig, SiameseConfig])
@pytest.mark.parametrize("value", ["true", "false"])
def test_the_old_bf16_key_is_one_line_naming_impl_precision(schema, value, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(schema, None, [f"impl.bf16={value}"])
    message = str(err.value)
    assert message.startswith("config key 'impl.bf16'") and "impl.precision" in message and "\n" not in message
    old = tmp_path / "old.yaml"
    old.write_text("impl:\n  bf16: true\n")
    with pytest.raises(ConfigError, match=r"'impl.bf16' is gone: use impl.precision"):
        load_config(schema, old)


@pytest.mark.parametrize("schema", [PretrainConfig, SiameseConfig])
def test_precision_and_device_keys(schema):
    cfg = load_config(schema, None, ["impl.precision=fp16", "impl.device=mps", "impl.fit_batch=true"])
    assert (cfg.impl.precision, cfg.impl.device, cfg.impl.fit_batch) == ("fp16", "mps", True)
    with pytest.raises(ConfigError, match="config key 'impl.precision': 'half' is not one of"):
        load_config(schema, None, ["impl.precision=half"])


# --- the NaN stop under fp16 -------------------------------------------------------------------------------


def _log(callback: StopOnNonFiniteLoss, logs: dict, optimizer=None, tmp_path=None) -> None:
    args = SimpleNamespace(output_dir=str(tmp_path))
    callback.on_log(args, SimpleNamespace(global_step=7), None, logs=logs, optimizer=optimizer)


def test_an_overflowing_fp16_step_that_the_scaler_skipped_is_not_a_divergence(tmp_path):
    """Bug: with fp16 the GradScaler skips a step whose gradients overflow, and the Trainer logs its grad_norm
    as inf; the NaN stop called that a divergence, so a T4 run died on the first overflow at a logging step."""
    scaler = torch.amp.GradScaler("cpu")  # as accelerate keeps it on the optimizer it hands the callbacks
    optimizer = SimpleNamespace(scaler=scaler)
    stop = StopOnNonFiniteLoss()
    _log(stop, {"loss": 2.5, "grad_norm": math.inf}, optimizer, tmp_path)  # skipped step: goes on
    assert skipped_by_loss_scaler("grad_norm", optimizer)
    with pytest.raises(TrainingDiverged, match="loss became nan"):  # the loss itself is never excused
        _log(stop, {"loss": math.nan, "grad_norm": 1.0}, optimizer, tmp_path)
    collapsed = SimpleNamespace(scaler=torch.amp.GradScaler("cpu", init_scale=MIN_LOSS_SCALE / 2))
    with pytest.raises(TrainingDiverged, match="grad_norm became inf"):  # the scale kept halving: overflow unscaled
        _log(stop, {"loss": 2.5, "grad_norm": math.inf}, collapsed, tmp_path)


def test_without_a_loss_scaler_an_infinite_gradient_norm_stops_the_run(tmp_path):
    for optimizer in (
        None,
        SimpleNamespace(scaler=None),
        SimpleNamespace(scaler=torch.amp.GradScaler("cpu", enabled=False)),
    ):
        with pytest.raises(TrainingDiverged, match="grad_norm became inf"):
            _log(StopOnNonFiniteLoss(), {"loss": 2.5, "grad_norm": math.inf}, optimizer, tmp_path)


# --- one real fp16 step ------------------------------------------------------------------------------------


def _tiny_mlm(architecture: str):
    """The project's training model (masked-only MLM head, pretrain/model.py), L2/H64."""
    from transformers import BertConfig, NomicBertConfig

    from pretrain.model import CLASSES

    torch.manual_seed(0)
    config_class = {"bert": BertConfig, "nomic_bert": NomicBertConfig}[architecture]
    config = config_class(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=128, max_position_embeddings=64, attn_implementation="sdpa")  # fmt: skip
    return CLASSES[architecture][0](config)


def _batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 256, (8, 32), generator=generator)
    mask = torch.ones_like(ids)
    mask[:4, 20:] = 0  # padded rows: the attention mask must not turn into NaN in fp16
    labels = torch.full_like(ids, -100)
    labels[:, ::5] = ids[:, ::5]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("architecture", ["bert", "nomic_bert"])
def test_an_fp16_autocast_step_with_loss_scaling_trains_like_fp32_on_a_tiny_bert(architecture: str):
    """A real fp16 step where this platform allows it: torch's CPU autocast in fp16 with a GradScaler (the
    Trainer's fp16 path needs CUDA; on CPU accelerate trains in fp32). CPU autocast keeps layer norm and softmax
    in fp16, harsher than CUDA's, which runs them in fp32."""
    reference, half = _tiny_mlm(architecture), _tiny_mlm(architecture)
    batch = _batch()
    loss32 = reference(**batch).loss
    loss32.backward()
    scaler = torch.amp.GradScaler("cpu")
    optimizer = torch.optim.AdamW(half.parameters(), lr=1e-3)
    embeddings = half.get_input_embeddings().weight
    before = embeddings.detach().clone()
    with torch.autocast("cpu", dtype=torch.float16):
        loss16 = half(**batch).loss
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)  # cross-entropy runs in fp32
    scaler.scale(loss16).backward()
    scaler.unscale_(optimizer)
    norm16 = torch.nn.utils.clip_grad_norm_(half.parameters(), 1.0)
    norm32 = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 65536.0  # no overflow: the step was taken, the scale kept
    assert abs(loss16.item() - loss32.item()) < 1e-2 * loss32.item()
    assert torch.isfinite(norm16) and abs(norm16.item() - norm32.item()) < 0.05 * norm32.item()
    assert all(p.dtype == torch.float32 for p in half.parameters())  # weights and optimizer stay fp32
    assert not torch.equal(before, embeddings)


# --- device --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"),
    [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"), (True, False, "cuda")],
)
def test_auto_device_is_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(device_module, "mps_available", lambda: mps)
    assert device_module.resolve_device("auto") == expected


def test_asking_for_a_missing_device_is_one_line(monkeypatch):
    monkeypatch.setattr(device_module, "mps_available", lambda: False)
    with pytest.raises(ConfigError, match="config key 'impl.device': mps was asked for"):
        device_module.resolve_device("mps")
    monkeypatch.setattr(device_module, "mps_available", lambda: True)
    assert device_module.resolve_device("mps") == "mps"


def test_the_mps_fallback_line():
    assert "runs on the CPU instead (PYTORCH_ENABLE_MPS_FALLBACK=1)" in device_module.mps_fallback_line(True, "1")
    assert "will fail" in device_module.mps_fallback_line(False, "1")
    assert "will fail" in device_module.mps_fallback_line(True, "0")


@pytest.mark.parametrize("module", ["pretrain.__main__", "siamese.evaluation.evaluate", "app.models"])
def test_entry_points_set_the_mps_fallback_before_torch_is_imported(module):
    code = (
        "import sys, os\n"
        f"import {module}\n"
        "import stagekit\n"
        "assert stagekit.MPS_FALLBACK_AT_TORCH_IMPORT, 'torch was imported before stagekit'\n"
        "assert os.environ['PYTORCH_ENABLE_MPS_FALLBACK'] == '1'\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTORCH_ENABLE_MPS_FALLBACK"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(("device", "expected"), [(H200, True), (A100, True), (T4, None), (V100, None), (CPU, None)])
def test_tf32_is_only_asked_for_where_it_exists(device, expected):
    assert choose_tf32(device, True) is expected


def test_pretraining_arguments_on_a_t4_are_fp16_without_tf32(monkeypatch):
    """Bug: on a T4 / V100 the pretraining stage passed tf32=True (impl.tf32's default), which transformers
    refuses below compute capability 8.0 ("--tf32 requires Ampere or a newer GPU arch"): no T4 run could start."""
    from pretrain.train import pretrain_arguments

    for where in ("stagekit.device.device_info", "pretrain.train.device_info"):
        monkeypatch.setattr(where, lambda kind: T4 if kind == "cuda" else CPU)
    monkeypatch.setattr("stagekit.device._CHOSEN", {})
    cfg = load_config(PretrainConfig, REPO_ROOT / "configs/pretrain/bert-medium.yaml")
    args = pretrain_arguments(cfg, "cuda", [])
    assert (args.fp16, args.bf16, args.tf32) == (True, False, None)
    with pytest.raises(ConfigError, match="impl.precision=fp16"):
        pretrain_arguments(load_config(PretrainConfig, None, ["impl.precision=bf16"]), "cuda", [])
