"""The whole-step CUDA graph runner (``train.cuda_graph``), checked on the CPU.

A CUDA graph replays the kernels it recorded: every Python value of the capture (the step
number, a float learning rate, a batch that was not copied into its buffers) is frozen, and its
outputs are overwritten by the next replay. ``ReplayBackend`` models exactly that: capture
records a call (and undoes what running it changed, since a capture runs no kernels), replay
repeats the call with the capture's arguments and writes into the capture's output tensors.
A runner that lets anything step-dependent escape the device tensors gives other losses and
weights than eager here, as it would on the GPU. ``tests/test_cuda.py`` runs the real graph.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import state_weights, tiny_sized

import train_clan_norm
import train_dacs_norm
import train_maxsquare_norm
import train_norm_only
from benchmarks import speed
from dataset.datasets import Batch
from utils.config import ConfigError, load_config
from utils.distributed import DistInfo
from utils.setups import scripts
from utils.training.graphs import GraphedStep, GraphShapeError, make_capturable
from utils.training.loop import _set_learning_rates, _step_runner
from utils.training.meters import accumulate
from utils.training.optim import ReleasedSGD
from utils.training.state import TrainState, prepare

SETUPS = {
    "source_only": (train_norm_only, ["loss.lambda_norm=0"]),
    "norm_only": (train_norm_only, ["loss.lambda_norm=0.5"]),
    "clan": (train_clan_norm, ["loss.lambda_norm=0"]),
    "clan_norm": (train_clan_norm, ["loss.lambda_norm=0.5"]),
    "maxsquare": (train_maxsquare_norm, ["loss.lambda_norm=0", "model.preset=maxsquare"]),
    "maxsquare_iw_multi_norm": (train_maxsquare_norm, [
        "loss.lambda_norm=0.5", "model.preset=maxsquare", "loss.maxsquare.image_wise=true",
        "loss.maxsquare.multi=true", "loss.maxsquare.threshold=0.2"]),
    # the random draws (ClassMix's keys, the augmentation) are tensors the runner copies in
    "dacs_norm": (train_dacs_norm, ["loss.lambda_norm=0.5", "model.preset=dacs",
                                    "loss.dacs.threshold=0.2"]),
    "dacs_one_pass": (train_dacs_norm, ["loss.lambda_norm=0", "model.preset=clan",
                                        "loss.dacs.student_passes=one"]),
    # DAFormer: AdamW, the frozen copy's feature distance, drop path and dropout (drawn from
    # the global stream, which a replay draws from as eager does), the pseudo-labels' rows
    "daformer_norm": (train_dacs_norm, [*tiny_sized(speed.SETUPS["DAFormer + Norm"][1]),
                                        "loss.lambda_norm=0.5", "loss.dacs.threshold=0.2",
                                        "loss.dacs.ignore_top=4", "loss.dacs.ignore_bottom=8"]),
}  # fmt: skip
# Warm-up over at step 3 (D's map switches on after the capture) and a short schedule, so the
# learning rates and dampings move every step; a large norm weight makes the term count.
SCHEDULE = ["optim.warmup_steps=3", "optim.schedule_steps=20", "loss.lambda_adv=0.1"]


class ReplayBackend:
    """The CPU stand-in for ``CudaGraphBackend`` (module docstring)."""

    def __init__(self, state: TrainState) -> None:
        self.state = state
        self.captures = 0

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        yield

    def capture(self, fn: Callable[[], dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
        tensors = _state_tensors(self.state)
        saved = [t.detach().clone() for t in tensors]
        rng = torch.get_rng_state()
        out = fn()  # records the call; what it changed is undone below, as no kernel ran
        for t, s in zip(tensors, saved):
            t.detach().copy_(s)
        torch.set_rng_state(rng)
        self.captures += 1
        return _Replay(fn, out), out


class _Replay:
    def __init__(self, fn: Callable[[], dict[str, Any]], out: dict[str, Any]) -> None:
        self.fn, self.out = fn, out

    def replay(self) -> None:
        for key, value in self.fn().items():
            if torch.is_tensor(value):
                self.out[key].copy_(value)


def _state_tensors(state: TrainState) -> list[torch.Tensor]:
    tensors = [t for m in state.modules.values() for t in (*m.parameters(), *m.buffers())]
    for opt in state.optimizers.values():
        tensors += [v for slots in opt.state.values() for v in slots.values() if torch.is_tensor(v)]
    return tensors


def _state(setup: str, small_model: list[str], *extra: str) -> tuple[Any, TrainState]:
    script, overrides = SETUPS[setup]
    torch.manual_seed(0)
    cfg = load_config(None, [*small_model, *SCHEDULE, *overrides, *extra])
    state = script.build(cfg, torch.device("cpu"))
    prepare(state, DistInfo())
    return script, state


def _batches(steps: int) -> list[tuple[Batch, Batch]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        label = torch.randint(0, 19, (1, 48, 64), generator=gen)
        label[:, :4] = 255
        label[:, 4:32, :32] = 11  # a "thing" over most of a 32x32 cell: DAFormer's distance
        source = Batch(torch.randn(1, 3, 48, 64, generator=gen), label, ["s"])
        out.append((source, Batch(torch.randn(1, 3, 48, 64, generator=gen), None, ["t"])))
    return out


def _run(
    state: TrainState, step_fn: Callable, batches: list[tuple[Batch, Batch]], start: int = 0
) -> list[dict[str, Any]]:
    """Steps ``start``... with the loop's learning rates; every step's outputs kept as returned
    (compared only at the end, so an output the next step overwrites is caught)."""
    outputs = []
    for i, (source, target) in enumerate(batches):
        step = start + i
        _set_learning_rates(state, step, 1)
        torch.manual_seed(step)  # dropout and drop path: a step's draws, however it is run
        outputs.append(step_fn(state, source, target if state.uses_target else None, step))
    return outputs


def _assert_same(eager: list[dict], graphed: list[dict], a: TrainState, b: TrainState) -> None:
    for step, (e, g) in enumerate(zip(eager, graphed, strict=True)):
        assert e.keys() == g.keys()
        for key in e:
            torch.testing.assert_close(
                torch.as_tensor(g[key]).float(), torch.as_tensor(e[key]).float(),
                rtol=1e-4, atol=1e-6, msg=lambda m, s=step, k=key: f"step {s}, {k}: {m}",
            )  # fmt: skip
    wa, wb = state_weights(a), state_weights(b)
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-6, msg=key)


def test_every_setup_of_the_table_is_graphed():
    assert {Path(script.__file__).name for script, _ in SETUPS.values()} == set(scripts())


@pytest.mark.parametrize("setup", list(SETUPS))
def test_graphed_step_gives_the_eager_losses_and_weights(setup, small_model):
    """7 steps: 2 warm-up steps, the capture at step 2, replays from there; D's map switches on
    at step 3, after the capture, and every step has its own batch, rates and dampings."""
    script, eager = _state(setup, small_model)
    _, graphed = _state(setup, small_model)
    batches = _batches(7)
    expected = _run(eager, script.train_step, batches)
    backend = ReplayBackend(graphed)
    runner = GraphedStep(script.train_step, backend, warmup=2)
    got = _run(graphed, runner, batches)
    assert backend.captures == 1
    _assert_same(expected, got, eager, graphed)
    # The scalars and rates live in device tensors the graph reads.
    groups = [g for o in graphed.optimizers.values() for g in o.param_groups]
    assert all(torch.is_tensor(g["lr"]) for g in groups)
    assert set(graphed.static_values) == set(graphed.schedule(graphed.cfg, 0))


def test_the_runner_is_needed_a_plain_replay_differs(small_model):
    """The stand-in is strict enough to fail: replaying the captured call without the runner's
    refills (its scalars and batch frozen at the capture) drifts from eager."""
    script, eager = _state("clan_norm", small_model)
    _, frozen = _state("clan_norm", small_model)
    batches = _batches(5)
    expected = _run(eager, script.train_step, batches)
    runner = GraphedStep(script.train_step, ReplayBackend(frozen), warmup=2)
    calls = {"n": 0}

    def frozen_step(state, source, target, step):
        calls["n"] += 1
        if calls["n"] > 3:  # after the capture: no new batch, no new scalars
            runner.graph.replay()
            return {k: v.clone() for k, v in runner.out.items()}
        return runner(state, source, target, step)

    got = _run(frozen, frozen_step, batches)
    with pytest.raises(AssertionError):
        _assert_same(expected, got, eager, frozen)


def test_graphed_run_resumes_from_its_checkpoint(small_model):
    """3 graphed steps, a checkpoint (plain numbers and eager optimizer settings), then a new
    state restored from it continues graphed for 4 steps: the same as 7 eager steps."""
    script, eager = _state("clan_norm", small_model)
    batches = _batches(7)
    expected = _run(eager, script.train_step, batches)

    _, first = _state("clan_norm", small_model)
    got = _run(first, GraphedStep(script.train_step, ReplayBackend(first), warmup=2), batches[:3])
    ckpt = first.checkpoint("clan_norm", 3)
    for sd in ckpt["optimizers"].values():
        for group in sd["param_groups"]:
            assert isinstance(group["lr"], float)
            assert not group.get("fused") and not group.get("capturable")

    _, second = _state("clan_norm", small_model)
    assert second.restore(ckpt, "ckpt") == 3
    runner = GraphedStep(script.train_step, ReplayBackend(second), warmup=1)
    got += _run(second, runner, batches[3:], start=3)
    _assert_same(expected, got, eager, second)


def test_a_batch_of_another_shape_is_refused(small_model):
    script, state = _state("norm_only", small_model)
    runner = GraphedStep(script.train_step, ReplayBackend(state), warmup=1)
    source, target = _batches(1)[0]
    runner(state, source, target, 0)
    small = Batch(source.image[..., :32], source.label[..., :32], ["s"])
    with pytest.raises(GraphShapeError, match=r"source images changed shape.*data\.source\.crop"):
        runner(state, small, target, 1)


def test_outputs_are_copies_the_next_step_cannot_overwrite(small_model):
    """``accumulate`` keeps the first value it is given: an output aliasing the graph's memory
    would change under it."""
    script, state = _state("norm_only", small_model)
    runner = GraphedStep(script.train_step, ReplayBackend(state), warmup=1)
    sums: dict[str, Any] = {}
    firsts = []
    for step, (source, target) in enumerate(_batches(4)):
        _set_learning_rates(state, step, 1)
        out = runner(state, source, target, step)
        if step >= 1:  # from the capture on (step 0 is the eager warm-up)
            firsts.append(float(out["loss_seg"]))
            accumulate(sums, out)
    assert float(sums["loss_seg"]) == pytest.approx(sum(firsts), rel=1e-6)


def test_released_sgd_reads_a_tensor_learning_rate_as_the_number():
    torch.manual_seed(0)
    grads = [torch.randn(4, 3), torch.randn(5)]
    results = []
    for lr in (0.1, torch.tensor(0.1)):
        params = [torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(5))]
        opt = ReleasedSGD([{"params": params, "repeats": [3, 1]}], lr=lr, momentum=0.9,
                          weight_decay=1e-2)  # fmt: skip
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        assert not torch.equal(a, torch.ones_like(a))


def test_make_capturable_moves_rates_and_adam_steps_to_the_device(small_model):
    _, state = _state("clan_norm", small_model)
    for p in state.modules["D"].parameters():
        p.grad = torch.zeros_like(p)
    state.optimizers["D"].step()  # Adam's step count, created eagerly
    make_capturable(state.optimizers, state.device)
    adam = state.optimizers["D"]
    assert all(g["capturable"] and g["fused"] for g in adam.param_groups)
    steps = [s["step"] for s in adam.state.values()]
    assert steps and all(torch.is_tensor(s) and s.dtype == torch.float32 for s in steps)
    sgd = state.optimizers["G"]
    assert all(g["fused"] and torch.is_tensor(g["lr"]) for g in sgd.param_groups)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.amp=fp16"], "train.amp=fp16"),
        (["train.compile=true"], "choose one"),
        (["data.source.crop=null", "data.source.scale_range=[0.5,1.5]"], "data.source gives"),
        (["data.target.crop=null", "data.target.resize=null"], "data.target keeps each"),
    ],
)
def test_config_refuses_what_a_graph_cannot_replay(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["train.cuda_graph=true", *overrides])


def test_cuda_graph_off_cuda_falls_back_to_eager_with_a_warning(small_model, caplog):
    script, state = _state("norm_only", small_model, "train.cuda_graph=true")
    with caplog.at_level(logging.WARNING, logger="train"):
        runner = _step_runner(state, script.train_step, DistInfo())
    assert runner is script.train_step
    assert "not available on cpu" in caplog.text


def test_logging_steps_are_read_after_the_next_step_is_queued(tmp_path, tiny_run, monkeypatch):
    """A logging step's values are copied out without waiting; the loop reads them after it has
    queued the next step, and at once where a checkpoint or the run's end follows."""
    from utils.training import meters

    events = []
    real_step, real_read = train_norm_only.train_step, meters.LogStep.read

    def step(state, source, target, i):
        events.append(("step", i))
        return real_step(state, source, target, i)

    def read(self):
        events.append(("read", self.step))
        return real_read(self)

    monkeypatch.setattr(train_norm_only, "train_step", step)
    monkeypatch.setattr(meters.LogStep, "read", read)
    args = ["--config", "configs/demo/norm_only.yaml", *tiny_run, "train.device=cpu",
            f"train.out_dir={tmp_path}", "train.run_name=r", "train.max_steps=7",
            "train.log_every=2", "train.save_every=4"]  # fmt: skip
    assert train_norm_only.main(args) == 0
    assert events == [
        ("step", 0), ("step", 1), ("step", 2), ("read", 1),  # step 1 logged, read after step 2
        ("step", 3), ("read", 3),  # a checkpoint at step 4 (index 3): read at once
        ("step", 4), ("step", 5), ("step", 6), ("read", 5), ("read", 6),  # the last, at once
    ]  # fmt: skip
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss_seg" in r] == [2, 4, 6, 7]


def test_compile_mode_reaches_torch_compile(small_model, monkeypatch):
    seen = []

    def fake_compile(module, mode=None):
        seen.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    _state("clan_norm", small_model, "train.compile=true", "train.compile_mode=reduce-overhead")
    assert seen == ["reduce-overhead", "reduce-overhead"]  # G and D
    with pytest.raises(ConfigError, match="train.compile_mode: expected one of default"):
        load_config(None, ["train.compile_mode=fast"])
