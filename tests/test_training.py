"""Tests of ddim.training and ddim.config: LR warm-up, EMA closed forms, the data order, config
round trips, and short runs of a tiny UNet on 8x8 images (logs, samples, exact resume)."""

import csv
import dataclasses
import json
import sys
import types

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ddim.config import DiffusionConfig, RunConfig, TrainConfig
from ddim.data import DataConfig, TensorImageDataset, WrappedDataset, load_dataset
from ddim.errors import BadValue
from ddim.models import UNetConfig
from ddim.training import ema_decay_at, ema_update, lr_at, train
from ddim.training.batches import IndexStream
from ddim.training.ema import POWER_GAMMA, POWER_SIGMA_REL, power_gamma, power_sigma_rel
from ddim.training.optim import adamw

TINY_MODEL = dict(base_channels=8, channel_mult=(1, 2), groups=4, num_heads=2)


def tiny_run(model: dict | None = None, **train) -> RunConfig:
    """A run of a tiny UNet on 8x8 digits, a few steps long, on the CPU."""
    options = dict(steps=4, batch_size=8, lr=1e-3, warmup_steps=2, sample_every=0, sample_n=4,
                   sample_steps=5, checkpoint_every=0, log_every=1, device="cpu")  # fmt: skip
    return RunConfig(
        model=UNetConfig(**{**TINY_MODEL, **(model or {})}),
        diffusion=DiffusionConfig(timesteps=50),
        data=DataConfig(dataset="digits", size=8),
        train=TrainConfig(**{**options, **train}),
    )


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", size=8)


def read_log(run_dir) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---- pure pieces -----------------------------------------------------------------------------
def test_lr_warms_up_linearly_then_stays():
    assert [lr_at(s, 1.0, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 3e-4, 0) == 3e-4


def test_adamw_takes_the_papers_steps_fused_on_the_cpu():
    """Two steps against AdamW's closed form (Loshchilov & Hutter 2019, Alg. 2, as torch applies
    it: decay theta by lr * lambda, then the bias-corrected Adam step), in float64."""
    theta0 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    theta = torch.nn.Parameter(theta0.clone())
    lr, wd, (b1, b2), eps = 0.1, 0.01, (0.9, 0.999), 1e-8
    opt = adamw([theta], lr, wd, torch.device("cpu"))
    assert opt.param_groups[0]["fused"]
    grads = [
        torch.tensor([0.3, -2.0, 1e-4], dtype=torch.float64),
        torch.tensor([-0.1, 0.5, 3.0], dtype=torch.float64),
    ]
    expected, m, v = theta0.clone(), torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for t, g in enumerate(grads, start=1):
        theta.grad = g.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        expected = expected * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        assert torch.allclose(theta.detach(), expected, rtol=1e-12, atol=1e-12)


def test_an_optimizer_state_keeps_its_kernel_on_resume():
    """A run saved before the fused kernel resumes with the per-tensor loop it started with."""
    old = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=1e-3)
    new = adamw([torch.nn.Parameter(torch.ones(2))], 1e-3, 0.0, torch.device("cpu"))
    new.load_state_dict(old.state_dict())
    assert not new.param_groups[0]["fused"]
    again = adamw([torch.nn.Parameter(torch.ones(2))], 1e-3, 0.0, torch.device("cpu"))
    again.load_state_dict(
        adamw([torch.nn.Parameter(torch.ones(2))], 1e-3, 0.0, torch.device("cpu")).state_dict()
    )
    assert again.param_groups[0]["fused"]


def test_ema_decay_warms_up_to_its_maximum():
    assert ema_decay_at(0, 0.999, "tf") == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay_at(90, 0.999, "tf") == pytest.approx(91 / 100)
    assert ema_decay_at(10**6, 0.999, "tf") == 0.999
    assert ema_decay_at(0, 0.999, "none") == 0.999
    assert ema_decay_at(0, 0.999, "power") == 0  # the first update copies the weights
    assert ema_decay_at(99, 0.9999, "power") == pytest.approx(0.99 ** (POWER_GAMMA + 1))
    assert ema_decay_at(10**6, 0.999, "power") == 0.999


def test_power_ema_spans_a_fixed_fraction_of_the_run():
    """EDM2's power-function profile: after T updates the average weighs the weights of step t by
    ~ t^gamma, a distribution over t/T with standard deviation sigma_rel (EDM2 eq. 123), at any T."""
    assert power_sigma_rel(power_gamma(0.05)) == pytest.approx(0.05, rel=1e-9)
    for T in (300, 6000):
        mean, second = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        for step in range(T):
            u = torch.full((1,), (step + 1) / T, dtype=torch.float64)
            decay = ema_decay_at(step, 1.0, "power")
            ema_update([mean, second], [u, u * u], decay)
        std = (second - mean**2).sqrt().item()
        assert std == pytest.approx(POWER_SIGMA_REL, rel=0.02 if T == 6000 else 0.06)
        assert mean.item() == pytest.approx((POWER_GAMMA + 1) / (POWER_GAMMA + 2), rel=0.01)


def test_ema_update_matches_the_closed_form():
    # k updates with constant decay d from e0 toward a constant p: e_k = p + d^k (e0 - p)
    e0, p, d, k = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 0.0, 0.5]), 0.9, 25
    ema, counter = [e0.clone(), torch.tensor(0)], torch.tensor(7)
    for _ in range(k):
        ema_update(ema, [p, counter], d)
    torch.testing.assert_close(ema[0], p + d**k * (e0 - p))
    assert ema[1] == 7  # integer buffers are copied, not averaged
    with pytest.raises(ValueError, match="EMA tensors"):
        ema_update(ema, [p], d)


def test_index_stream_is_a_function_of_the_position():
    stream = IndexStream(10, seed=3)
    whole = stream.take(0, 25)
    parts = torch.cat([IndexStream(10, 3).take(0, 7), stream.take(7, 11), IndexStream(10, 3).take(18, 7)])
    assert torch.equal(whole, parts)
    assert sorted(whole[:10].tolist()) == list(range(10)) and sorted(whole[10:20].tolist()) == list(range(10))
    assert not torch.equal(whole[:10], whole[10:20])  # a new permutation each epoch
    assert not torch.equal(IndexStream(10, 4).take(0, 10), whole[:10])


# ---- config ----------------------------------------------------------------------------------
def test_run_config_round_trips_through_json():
    run = tiny_run(model=dict(num_classes=10, self_condition=True, attention_resolutions=(2,)))
    run = dataclasses.replace(run, data=DataConfig(dataset="digits", size=(8, 8), flip=True))
    assert RunConfig.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    # only a format upgrade fills missing sections and keys with their defaults, explicitly
    assert RunConfig.from_dict({}, fill_defaults=True) == RunConfig()
    assert RunConfig.from_dict({"train": {"steps": 7}}, fill_defaults=True).train == TrainConfig(steps=7)


def test_run_config_refuses_a_missing_key():
    """An edited config.json never silently changes meaning: a deleted key is an error."""
    d = json.loads(json.dumps(RunConfig().to_dict()))
    del d["diffusion"]["prediction"]
    with pytest.raises(BadValue, match="diffusion lacks the key.*'prediction'"):
        RunConfig.from_dict(d)
    with pytest.raises(BadValue, match="run config lacks the key.*'train'"):
        RunConfig.from_dict({k: v for k, v in RunConfig().to_dict().items() if k != "train"})


@pytest.mark.parametrize(
    "d, match",
    [
        ({"trian": {}}, "unknown key.*'trian'"),
        ({"train": {"stpes": 1}}, "unknown key.*'stpes' in train"),
        ({"train": {"steps": "100"}}, "train.steps must be of type int"),
        ({"train": {"ema_warmup": True}}, "train.ema_warmup must be of type str"),
        ({"train": {"ema_warmup": "exp"}}, "ema_warmup must be one of"),
        ({"train": {"batch_size": 6, "grad_accum": 4}}, "divisible by grad_accum"),
        ({"train": {"weighting": "snr"}}, "weighting must be one of"),
        ({"diffusion": {"prediction": "noise"}}, "prediction must be one of"),
        ({"diffusion": {"timesteps": 10}}, "sample_steps"),
        ({"model": {"out_channels": 2}}, "out_channels"),
        ({"model": []}, "model must be a JSON object"),
        ({"data": {"size": "ab"}}, "data.size must be of type int | tuple"),
        ({"model": {"num_classes": "x"}}, "model.num_classes must be of type int | None"),
        ({"model": {"channel_mult": [1, "2"]}}, "model.channel_mult must be of type tuple"),
        ({"train": {"lr": float("inf")}}, "train.lr must be of type float .finite."),
        ({"train": {"offset_noise": 1e30}}, "offset_noise must lie in"),
        ({"train": {"lr": 5.0}}, "lr must lie in"),
        ({"train": {"seed": 2**64}}, "seed must be below 2..64"),
    ],
)
def test_run_config_from_dict_refuses_bad_input(d, match):
    with pytest.raises(BadValue, match=match):
        RunConfig.from_dict(d, fill_defaults=True)


def test_the_library_shares_the_config_checks():
    """The dataclasses check themselves, so a config built in Python is refused like a file."""
    with pytest.raises(BadValue, match="train.lr must be of type float"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(BadValue, match="data.size must be of type"):
        RunConfig(data=DataConfig(size="ab"))


# ---- short runs ------------------------------------------------------------------------------
def test_train_writes_log_samples_and_checkpoints(tmp_path, digits):
    run = tiny_run(steps=5, log_every=2, sample_every=2, checkpoint_every=1, keep_last=2)
    newest = train(run, tmp_path, progress=False, dataset=digits)
    assert newest == tmp_path / "checkpoints" / "step-000005"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000004", "step-000005"]
    rows = read_log(tmp_path)
    assert [int(r["step"]) for r in rows] == [2, 4, 5]  # the last step is always logged
    assert set(rows[0]) == {"step", "loss", "lr", "grad_norm", "ema_decay", "images_per_s", "elapsed_s"}
    assert float(rows[0]["lr"]) == 1e-3 and float(rows[0]["images_per_s"]) > 0
    # 4 samples of 8x8 -> a 2x2 grid of tiles enlarged 8 times, 1px apart: 2 * (64 + 1) + 1
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step-000002.png", "step-000004.png", "step-000005.png"]  # and the last step's
    for grid in grids:
        with Image.open(tmp_path / "samples" / grid) as im:
            assert im.size == (131, 131) and im.mode == "L"
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(run, tmp_path, progress=False, dataset=digits)


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "data-loader"])
def test_resume_continues_exactly(tmp_path, digits, in_memory):
    """N steps in one go == N/2 steps, then resume for N/2 more: the same weights, EMA and log,
    with flips, label dropout, self-conditioning and gradient accumulation all drawing randomness."""
    data = TensorImageDataset(digits.images[:40], digits.labels[:40], 10, flip=True)
    if not in_memory:  # no .images: the DataLoader path
        data = WrappedDataset(TensorImageDataset(data.images, data.labels, 10), num_classes=10, flip=True)
    model = dict(num_classes=10, self_condition=True, dropout=0.1)
    options = dict(batch_size=6, grad_accum=2, label_dropout=0.3, checkpoint_every=2)
    train(tiny_run(model, steps=6, **options), tmp_path / "once", progress=False, dataset=data)
    train(tiny_run(model, steps=2, **options), tmp_path / "twice", progress=False, dataset=data)
    end = train(
        tiny_run(model, steps=6, **options), tmp_path / "twice", resume=True, progress=False, dataset=data
    )
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "once" / "checkpoints" / "step-000006" / name)
        b = load_file(end / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    once, twice = read_log(tmp_path / "once"), read_log(tmp_path / "twice")
    assert [r["step"] for r in twice] == [str(s) for s in range(1, 7)]
    assert [float(r["loss"]) for r in once] == pytest.approx([float(r["loss"]) for r in twice], abs=1e-6)


def test_resume_refuses_another_model(tmp_path):
    train(tiny_run(steps=1), tmp_path, progress=False)  # the data from run.data: digits at 8x8
    with pytest.raises(ValueError, match="another model or diffusion config"):
        train(tiny_run({"base_channels": 16}, steps=2), tmp_path, resume=True, progress=False)


def test_train_checks_the_dataset_against_the_model(tmp_path, digits):
    rgb = TensorImageDataset(torch.zeros(4, 3, 8, 8))
    with pytest.raises(ValueError, match="takes 1 channel"):
        train(tiny_run(), tmp_path, progress=False, dataset=rgb)
    unlabelled = TensorImageDataset(digits.images[:8])
    with pytest.raises(ValueError, match="class-conditional.*no labels"):
        train(tiny_run({"num_classes": 10}), tmp_path, progress=False, dataset=unlabelled)


def test_tensorboard_gets_the_logged_values_when_it_imports(tmp_path, digits, monkeypatch):
    calls = []

    class Writer:  # stands in for torch.utils.tensorboard.SummaryWriter
        def __init__(self, log_dir, purge_step=None):
            calls.append(("open", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step))

        def close(self):
            calls.append("close")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    train(tiny_run(steps=2, log_every=2), tmp_path, progress=False, dataset=digits)
    assert calls[0] == ("open", tmp_path / "tensorboard", None) and calls[-1] == "close"
    assert ("loss", 2) in calls and ("images_per_s", 2) in calls


def test_bf16_autocast_trains_on_cpu(tmp_path, digits):
    train(tiny_run(steps=2, bf16=True), tmp_path, progress=False, dataset=digits)
    losses = [float(r["loss"]) for r in read_log(tmp_path)]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)


def test_loss_decreases_on_digits(tmp_path, digits):
    run = tiny_run(steps=40, batch_size=32, lr=3e-3, warmup_steps=5)
    train(run, tmp_path, progress=False, dataset=digits)
    losses = [float(r["loss"]) for r in read_log(tmp_path)]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
