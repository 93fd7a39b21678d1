"""The CUDA suite: every path that only a GPU takes, run on one. Skipped without a GPU.

    python -m pytest tests/test_cuda.py -q          # on a machine with an NVIDIA GPU

It covers every setup's step with ``train.amp`` off, bf16 and fp16, channels_last on and off,
``torch.compile`` on and off; the loop end to end (train, periodic checkpoints, ``--resume``,
``evaluate_cityscapes.py --flip --save-dir``, ``ensemble.py``); torchrun on nccl; no host
sync inside a training step or a confusion-matrix update; and the released optimizer's foreach
kernels against the CPU.

Against the CPU, float32 with TF32 off on both sides: logged values within rtol 1e-4 (D's
accuracies, a fraction of thresholded pixels, within 1e-3 absolute), weights after two steps within
rtol 1e-3 / atol 1e-5. A GPU run is not bit-reproducible (atomic adds in the backward of
upsampling), so a resumed run is compared with an uninterrupted one within the same
tolerances, and the mIoU of ``results.json`` with what ``evaluate_cityscapes.py`` reports for
the same checkpoint within 0.1 points (both float32; cuDNN may pick other algorithms).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import bf16_head_gradient_errors, tiny_sized

import ensemble
import evaluate_cityscapes
import train_clan_norm
import train_dacs_norm
import train_maxsquare_norm
import train_norm_only
from benchmarks import speed
from benchmarks.speed import SETUPS
from dataset.datasets import Batch
from model.deeplabv2 import DeepLabV2
from utils.checkpoint import load_checkpoint
from utils.config import ConfigError, load_config
from utils.distributed import DistInfo, resolve_device
from utils.evaluation.inference import predict_scores
from utils.evaluation.metrics import ConfusionMatrix
from utils.self_training import freeze_stochastic_layers
from utils.training.meters import LogStep, accumulate
from utils.training.state import TrainState, prepare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parent.parent
CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.fixture
def no_tf32():
    """float32 as on the CPU: TF32 off for cuDNN convolutions and matmuls."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _state(script, overrides: list[str], device: torch.device) -> TrainState:
    torch.manual_seed(0)
    state = script.build(load_config(None, [*overrides, f"train.device={device}"]), device)
    prepare(state, DistInfo())
    return state


def _deterministic(state: TrainState) -> TrainState:
    """The state with G's dropout and drop path off (DAFormer's; DeepLab-v2 has none): the
    CPU's, the GPU's, a compiled step's and a graph's random streams draw differently, so
    the comparisons compare the deterministic step."""
    freeze_stochastic_layers(state.modules["G"])
    return state


def _convs(state: TrainState) -> tuple[str, str]:
    """The names of G's first and last convolution weights (DeepLab-v2's stem and C2's first
    ASPP branch; MiT's first patch embedding and DAFormer's classifier), as ``_weights`` keys."""
    names = [n for n, m in state.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return f"G.{names[0]}.weight", f"G.{names[-1]}.weight"


def _weights(state: TrainState) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value.detach().cpu().clone()
        for name, module in state.modules.items()
        for key, value in module.state_dict().items()
    }


def _pinned(batches: tuple[Batch, Batch]) -> tuple[Batch, Batch]:
    """The batches as the loader delivers them on CUDA: in pinned memory."""
    return tuple(
        Batch(b.image.pin_memory(), None if b.label is None else b.label.pin_memory(), b.names)
        for b in batches
    )


def _close(a: dict, b: dict, rtol: float = 1e-4) -> None:
    for key in a:
        atol = max(1e-3, rtol) if key.startswith("d_acc") else 1e-6
        torch.testing.assert_close(
            float(a[key]), float(b[key]), rtol=rtol, atol=atol, msg=lambda m, k=key: f"{k}: {m}"
        )


@pytest.fixture
def upsampled(monkeypatch):
    """(dtype, channels) of every tensor that ``F.interpolate`` receives while the test runs."""
    import torch.nn.functional as F

    seen = []
    interpolate = F.interpolate

    def spy(x, *args, **kwargs):
        seen.append((x.dtype, x.shape[1]))
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", spy)
    return seen


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_setup_steps_on_cuda(
    setup, amp, channels_last, small_model, small_batches, upsampled
):
    script, extra = SETUPS[setup]
    overrides = [*small_model, *tiny_sized(extra), f"train.amp={amp}",
                 f"train.channels_last={channels_last}"]  # fmt: skip
    state = _state(script, overrides, CUDA)
    if amp == "fp16":  # at 2^16 D's first float16 gradients overflow and its step is skipped
        state.scaler = torch.amp.GradScaler("cuda", init_scale=256.0)
    first, last = _convs(state)
    weight = state.model.get_parameter(first[len("G.") :])
    assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    source, target = _pinned(small_batches)
    tgt = target if state.uses_target else None
    before, sums = _weights(state), {}
    for step in (0, 20):
        terms = script.train_step(state, source, tgt, step)
        for key, value in terms.items():
            assert isinstance(value, float) or value.device == CUDA, key
        accumulate(sums, terms)
    means = LogStep(sums, 2, DistInfo(), CUDA).read()
    assert all(torch.isfinite(torch.tensor(v)) for v in means.values()), means
    # logits (19 channels) upsampled in float32; DAFormer's head resizes its stage embeddings
    # (16 channels here) in the step's precision
    logits = {dtype for dtype, channels in upsampled if channels == 19}
    assert logits == {torch.float32}, upsampled
    after = _weights(state)
    moved = [k for k in after if not torch.equal(after[k], before[k])]
    assert first in moved and last in moved
    if "D" in state.modules:
        assert "D.conv1.weight" in moved


@pytest.mark.parametrize("setup", list(SETUPS))
def test_cuda_step_matches_the_cpu(setup, small_model, small_batches, no_tf32):
    script, extra = SETUPS[setup]
    cpu, gpu = (_deterministic(_state(script, [*small_model, *tiny_sized(extra)], d))
                for d in (CPU, CUDA))  # fmt: skip
    source, target = small_batches
    tgt = target if cpu.uses_target else None
    for step in (0, 20):
        _close(script.train_step(gpu, source, tgt, step), script.train_step(cpu, source, tgt, step))
    w_cpu, w_gpu = _weights(cpu), _weights(gpu)
    for key in w_cpu:
        torch.testing.assert_close(w_gpu[key], w_cpu[key], rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_compiled_step_matches_eager_on_cuda(setup, small_model, small_batches, no_tf32):
    script, extra = SETUPS[setup]
    extra = tiny_sized(extra)
    eager = _deterministic(_state(script, [*small_model, *extra], CUDA))
    compiled = _deterministic(_state(script, [*small_model, *extra, "train.compile=true"], CUDA))
    assert compiled.run("G") is not compiled.modules["G"]
    source, target = small_batches
    tgt = target if eager.uses_target else None
    for step in (0, 20, 21):
        logs_c = script.train_step(compiled, source, tgt, step)
        _close(logs_c, script.train_step(eager, source, tgt, step), rtol=1e-3)
    w_e, w_c = _weights(eager), _weights(compiled)
    for key in w_e:
        torch.testing.assert_close(w_c[key], w_e[key], rtol=1e-3, atol=1e-5, msg=key)


# Each script once; MaxSquare + IW + Multi: the image-wise counts and the pseudo-labels stay on
# the device too; DACS: ClassMix, the teacher's weight and the augmentation as well; DAFormer:
# its feature distance (the label downscaled, the classes' cells), the pseudo-labels' rows,
# AdamW.
SYNC_CASES = {
    "clan": (train_clan_norm, []),
    "norm_only": (train_norm_only, []),
    "maxsquare": (train_maxsquare_norm, ["model.preset=maxsquare",
                                         "loss.maxsquare.image_wise=true",
                                         "loss.maxsquare.multi=true"]),
    "dacs": (train_dacs_norm, ["model.preset=dacs"]),
    "daformer": (train_dacs_norm, tiny_sized(SETUPS["DAFormer + Norm"][1])),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SYNC_CASES))
def test_a_training_step_never_waits_for_the_gpu(case, small_model, small_batches):
    script, keys = SYNC_CASES[case]
    state = _state(script, [*small_model, "train.amp=bf16", *keys], CUDA)
    source, target = _pinned(small_batches)
    script.train_step(state, source, target, 20)  # cudnn.benchmark autotunes on first use
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        script.train_step(state, source, target, 21)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_evaluation_never_waits_for_the_gpu_and_counts_as_the_cpu():
    torch.manual_seed(0)
    model = DeepLabV2(layers=(1, 1, 1, 1), base_width=8).to(CUDA).eval()
    image = torch.randn(2, 3, 48, 64, device=CUDA)
    label = torch.randint(0, 19, (2, 96, 128), device=CUDA)
    label[:, :8] = 255
    predict_scores(model, image, (96, 128), flip=True)  # autotuning outside the check
    gpu_cm, cpu_cm = ConfusionMatrix(19, CUDA), ConfusionMatrix(19)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pred = predict_scores(model, image, (96, 128), flip=True).argmax(1)
        gpu_cm.update(pred, label)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu_cm.update(pred.cpu(), label.cpu())
    assert torch.equal(gpu_cm.mat.cpu(), cpu_cm.mat)
    assert int(gpu_cm.mat.sum()) == 2 * 88 * 128


@pytest.mark.parametrize("channels_last", [True, False], ids=["nhwc", "nchw"])
def test_bf16_head_gradients_follow_float32s_on_cuda(channels_last, no_tf32):
    """The CPU's bf16 kernel got a dilated depthwise convolution's weight gradient wrong on
    channels_last inputs (tests/test_daformer.py); cuDNN's must not, in either layout."""
    errors = bf16_head_gradient_errors(CUDA, channels_last)
    assert max(errors.values()) < 0.2, {n: round(e, 3) for n, e in errors.items() if e >= 0.2}


def test_a_gpu_index_beyond_the_machine_is_an_error():
    count = torch.cuda.device_count()
    assert resolve_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
    with pytest.raises(ConfigError, match=f"needs GPU {count}, but this machine has {count}"):
        resolve_device(f"cuda:{count}")


def test_benchmark_compares_like_with_like_on_cuda(small_model):
    ours, ref = speed.build_pair(train_clan_norm, [*small_model, "train.device=cuda"], CUDA)
    assert speed.layout(ours) == speed.layout(ref) == "channels_last, eager"
    assert ref.amp_dtype is None and ours.amp_dtype is None  # defaults: amp off


def _logged(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k[len("train/") :]: v for k, v in r.items() if k.startswith("train/")}
        for r in rows
        if "train/loss_seg" in r
    ]


def _train(script, config: str, tmp_path: Path, tiny_run: list[str], name: str, *extra: str):
    args = ["--config", config, *tiny_run, f"train.out_dir={tmp_path}", f"train.run_name={name}",
            *extra]  # fmt: skip
    assert script.main(args) == 0
    return tmp_path / name


def _close_runs(a: Path, b: Path, rtol: float) -> None:
    logs_a, logs_b = _logged(a), _logged(b)
    assert len(logs_a) == len(logs_b)
    for x, y in zip(logs_a, logs_b):
        x.pop("sec_per_step"), y.pop("sec_per_step")
        _close(x, y, rtol)


def test_train_resume_evaluate_and_ensemble_on_cuda(tmp_path, tiny_run, no_tf32, capsys):
    config = "configs/demo/clan_norm.yaml"
    cuda = ["train.device=cuda"]
    full = _train(train_clan_norm, config, tmp_path, tiny_run, "full", *cuda,
                  "train.max_steps=4", "train.save_every=2")  # fmt: skip
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == [
        "last.pth", "step_000002.pth", "step_000004.pth"
    ]  # fmt: skip
    assert "device cuda:0" in (full / "train.log").read_text()
    part = _train(train_clan_norm, config, tmp_path, tiny_run, "part", *cuda, "train.max_steps=2")
    assert train_clan_norm.main(["--resume", str(part), "train.max_steps=4"]) == 0
    _close_runs(part, full, rtol=1e-4)
    # the same run on the CPU
    cpu = _train(train_clan_norm, config, tmp_path, tiny_run, "cpu", "train.device=cpu",
                 "train.max_steps=4")  # fmt: skip
    _close_runs(cpu, full, rtol=1e-4)

    ckpt = full / "checkpoints" / "last.pth"
    trained = json.loads((full / "results.json").read_text())["mIoU"]
    out = tmp_path / "eval.json"
    assert evaluate_cityscapes.main(["--restore", str(ckpt), "--results", str(out)]) == 0
    assert json.loads(out.read_text())["mIoU"] == pytest.approx(trained, abs=1e-3)
    preds = tmp_path / "preds"
    assert (
        evaluate_cityscapes.main(["--restore", str(ckpt), "--flip", "--save-dir", str(preds)]) == 0
    )
    flipped = json.loads((preds / "results.json").read_text())
    assert flipped["flip"] is True and flipped["num_images"] == 3
    assert len(list((preds / "color").rglob("*.png"))) == 3
    args = ["--restore", str(ckpt), str(part / "checkpoints" / "last.pth"), "--weights", "0.7",
            "0.3", "--flip", "--results", str(tmp_path / "ens.json")]  # fmt: skip
    assert ensemble.main(args) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("mIoU: ")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_runs_evaluate_in_float32_and_resume(amp, tmp_path, tiny_run):
    config, cuda = "configs/demo/clan_norm.yaml", ["train.device=cuda", f"train.amp={amp}"]
    full = _train(train_clan_norm, config, tmp_path, tiny_run, "full", *cuda, "train.max_steps=4")
    part = _train(train_clan_norm, config, tmp_path, tiny_run, "part", *cuda, "train.max_steps=2")
    assert train_clan_norm.main(["--resume", str(part), "train.max_steps=4"]) == 0
    _close_runs(part, full, rtol=1e-2)  # half precision: atomics' order shows more
    a = load_checkpoint(full / "checkpoints" / "last.pth")
    b = load_checkpoint(part / "checkpoints" / "last.pth")
    assert a["scaler"] == b["scaler"] and (a["scaler"] is None) == (amp == "bf16")
    ckpt, out = full / "checkpoints" / "last.pth", tmp_path / "eval.json"
    trained = json.loads((full / "results.json").read_text())["mIoU"]
    assert evaluate_cityscapes.main(["--restore", str(ckpt), "--results", str(out)]) == 0
    assert json.loads(out.read_text())["mIoU"] == pytest.approx(trained, abs=1e-3)


@pytest.mark.parametrize("processes", [1, 2])
def test_torchrun_on_nccl(processes, tmp_path, tiny_run):
    if torch.cuda.device_count() < processes:
        pytest.skip(f"needs {processes} GPUs")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", "train_clan_norm.py", "--config",
           "configs/demo/clan_norm.yaml", *tiny_run, "train.device=cuda", "train.amp=bf16",
           "train.max_steps=3", f"train.out_dir={tmp_path}", "train.run_name=ddp"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "ddp"
    log = (run / "train.log").read_text()
    assert f"rank 0 of {processes}, backend nccl" in log
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 3 and len(results["iou"]) == 19
    assert proc.stdout.rstrip().splitlines()[-1].startswith("mIoU: ")


@pytest.mark.parametrize("updates", ["released", "released_torch14"])
def test_released_sgd_on_cuda_matches_the_cpu(updates):
    """The foreach kernels on CUDA round like the CPU's per-tensor ops up to an ulp per entry."""
    from utils.training.optim import build_sgd

    cfg = load_config(None, [f"optim.backbone_updates={updates}", "optim.lr=0.1"])
    models, opts = [], []
    for device in (CPU, CUDA):
        torch.manual_seed(0)
        model = DeepLabV2(layers=(2, 2, 2, 2), base_width=8).to(device)
        models.append(model)
        opts.append(build_sgd(cfg.optim, model.backbone_stages(), model.param_groups(0.1)))
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        for p_cpu, p_gpu in zip(models[0].parameters(), models[1].parameters()):
            if p_cpu.requires_grad:
                g = torch.randn(p_cpu.shape, generator=gen)
                p_cpu.grad, p_gpu.grad = g.clone(), g.to(CUDA)
        for opt in opts:
            opt.step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6, msg=name)


def _graph_batches(steps: int) -> list[tuple[Batch, Batch]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        label = torch.randint(0, 19, (1, 48, 64), generator=gen)
        source = Batch(torch.randn(1, 3, 48, 64, generator=gen), label, ["s"])
        out.append(_pinned((source, Batch(torch.randn(1, 3, 48, 64, generator=gen), None, ["t"]))))
    return out


def _steps(state: TrainState, step_fn, batches) -> list[dict]:
    from utils.training.loop import _set_learning_rates

    outs = []
    for step, (source, target) in enumerate(batches):
        _set_learning_rates(state, step, 1)
        outs.append(step_fn(state, source, target if state.uses_target else None, step))
    return outs


GRAPH_SCHEDULE = ["optim.warmup_steps=4", "optim.schedule_steps=20"]


@pytest.mark.parametrize("amp", ["off", "bf16"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_cuda_graph_step_matches_eager(setup, amp, small_model, no_tf32):
    """7 steps: 3 eager warm-up steps on the side stream, the capture at step 3, replays; D's
    map switches on at step 4, after the capture. Tolerances as for torch.compile (the graph's
    optimizers are the fused ones)."""
    from utils.training.graphs import CudaGraphBackend, GraphedStep

    script, extra = SETUPS[setup]
    overrides = [*small_model, *tiny_sized(extra), *GRAPH_SCHEDULE, f"train.amp={amp}"]
    eager, graphed = (_deterministic(_state(script, overrides, CUDA)) for _ in range(2))
    batches = _graph_batches(7)
    expected = _steps(eager, script.train_step, batches)
    runner = GraphedStep(script.train_step, CudaGraphBackend(CUDA))
    got = _steps(graphed, runner, batches)
    assert runner.graph is not None
    for e, g in zip(expected, got):
        _close(g, e, rtol=1e-3)
    w_e, w_g = _weights(eager), _weights(graphed)
    for key in w_e:
        torch.testing.assert_close(w_g[key], w_e[key], rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.parametrize("case", list(SYNC_CASES))
def test_a_graphed_step_never_waits_for_the_gpu(case, small_model):
    from utils.training.graphs import CudaGraphBackend, GraphedStep

    script, keys = SYNC_CASES[case]
    state = _state(script, [*small_model, "train.amp=bf16", *keys], CUDA)
    runner = GraphedStep(script.train_step, CudaGraphBackend(CUDA), warmup=2)
    batches = _graph_batches(5)
    _steps(state, runner, batches[:4])  # warm-up, capture, one replay
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        from utils.training.loop import _set_learning_rates

        _set_learning_rates(state, 4, 1)
        runner(state, *batches[4], 4)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_run_resumes_and_matches_eager(tmp_path, tiny_run, no_tf32):
    config, graph = "configs/demo/clan_norm.yaml", ["train.device=cuda", "train.cuda_graph=true"]
    full = _train(train_clan_norm, config, tmp_path, tiny_run, "g_full", *graph,
                  "train.max_steps=6")  # fmt: skip
    assert (
        "captured the training step as a CUDA graph at step 3" in (full / "train.log").read_text()
    )
    part = _train(train_clan_norm, config, tmp_path, tiny_run, "g_part", *graph,
                  "train.max_steps=4")  # fmt: skip
    assert train_clan_norm.main(["--resume", str(part), "train.max_steps=6"]) == 0
    _close_runs(part, full, rtol=1e-3)
    eager = _train(train_clan_norm, config, tmp_path, tiny_run, "g_eager", "train.device=cuda",
                   "train.max_steps=6")  # fmt: skip
    _close_runs(eager, full, rtol=1e-3)


def test_reduce_overhead_compile_matches_eager(small_model, no_tf32):
    script, extra = SETUPS["CLAN + Norm"]
    eager = _state(script, [*small_model, *extra], CUDA)
    compiled = _state(script, [*small_model, *extra, "train.compile=true",
                               "train.compile_mode=reduce-overhead"], CUDA)  # fmt: skip
    batches = _graph_batches(4)
    for e, c in zip(_steps(eager, script.train_step, batches),
                    _steps(compiled, script.train_step, batches)):  # fmt: skip
        _close(c, e, rtol=1e-3)
