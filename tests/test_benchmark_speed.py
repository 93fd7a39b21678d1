"""The speed benchmark's reference procedure and bookkeeping (not its timings: no timed tests).

The reference step stands for the released code's procedure; the ratio ours / reference only
means something if both compute the same update, so that is checked here on a small model."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_DAFORMER, tiny_sized

import train_clan_norm
import train_maxsquare_norm
from benchmarks import speed
from utils.config import load_config
from utils.errors import UsageError

# every timed setup, and MaxSquare + IW + Multi (its pseudo-labels kept at threshold 0.1)
CASES = {**speed.SETUPS, "MaxSquare + IW + Multi + Norm": (train_maxsquare_norm, [
    *speed.SETUPS["MaxSquare + IW + Norm"][1], "loss.maxsquare.multi=true",
    "loss.maxsquare.threshold=0.1"])}  # fmt: skip
# DAFormer's at the tests' size, with its pseudo-labels weighed (a low threshold) and their
# rows kept within a 48-row image
DAFORMER_ROWS = ["loss.dacs.threshold=0.1", "loss.dacs.ignore_top=4", "loss.dacs.ignore_bottom=8"]


def _first_conv(model: torch.nn.Module) -> str:
    """The name of a network's first convolution weight (DeepLab-v2's stem, MiT's first patch
    embedding)."""
    return next(f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("name", list(CASES))
def test_reference_step_makes_the_same_update_as_ours(name, small_model, small_batches):
    script, extra = CASES[name]
    reference = speed.REFERENCES.get(script, speed.reference_step)
    rows = DAFORMER_ROWS if "model.arch=daformer" in extra else []
    # lambda_norm large enough that the norm term visibly moves the backbone
    cfg = load_config(None, [*small_model, "loss.lambda_norm=0.5", *tiny_sized(extra), *rows])
    source, target = small_batches
    if cfg.loss.dacs.fd_lambda > 0:  # a "thing" over a whole cell: the feature distance reads it
        label = source.label.clone()
        label[:, :32, :32] = 11
        source = source._replace(label=label)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        states.append(script.build(cfg, torch.device("cpu")))
    ours, ref = states
    if cfg.optim.optimizer == "adamw":  # its first steps move a weight by about lr whatever the
        # gradient's size, so a gradient of rounding size could flip it: a large eps makes the
        # update linear in the gradient (a left-out term still shows, by 1e-4 and more)
        for state in states:
            for group in state.optimizers["G"].param_groups:
                group["eps"] = 1e-3
    tgt = target if ours.uses_target else None
    before = {k: v.clone() for k, v in ours.model.state_dict().items()}
    for step in (20, 21):  # past warm-up: every weight map in use
        rng = torch.get_rng_state()  # the same dropout and drop path draws for both
        script.train_step(ours, source, tgt, step)
        torch.set_rng_state(rng)
        reference(ref, source, tgt, step)
    for name, module in ours.modules.items():
        theirs = ref.modules[name].state_dict()
        for key, a in module.state_dict().items():
            torch.testing.assert_close(a, theirs[key], rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")
    moved = [k for k, v in ours.model.state_dict().items() if not torch.equal(v, before[k])]
    assert _first_conv(ours.model) in moved


def test_state_bytes_counts_parameters_gradients_and_optimizer_state():
    linear = torch.nn.Linear(3, 2)  # 6 + 2 floats
    bn = torch.nn.BatchNorm1d(2)  # 4 parameter floats; buffers: 2 + 2 floats and one int64
    opt = torch.optim.SGD([*linear.parameters(), *bn.parameters()], lr=0.1, momentum=0.9)
    state = SimpleNamespace(modules={"a": linear, "b": bn}, optimizers={"o": opt})
    params = (8 + 4) * 4
    buffers = 4 * 4 + 8
    assert speed._state_bytes(state) == params + buffers
    bn(linear(torch.randn(4, 3))).sum().backward()
    opt.step()  # gradients and momentum buffers now exist
    assert speed._state_bytes(state) == 3 * params + buffers


def test_benchmark_runs_end_to_end_and_writes_its_table(tmp_path, capsys, small_model):
    out = tmp_path / "speed.md"
    args = [
        "--device", "cpu", "--crop", "48", "64", "--amp", "off", "--steps", "2", "--warmup", "0",
        "--eval-images", "3", "--eval-distinct", "2", "--eval-batch", "2", "--eval-workers", "0",
        "--eval-size", "64", "128", "--eval-cache", str(tmp_path / "eval"), "--out", str(out),
        "--loader-configs", "configs/demo/clan_norm.yaml", "--loader-distinct", "1",
        "--loader-batches", "2", "--loader-overrides", "data.num_workers=0", "--",
        *small_model, "data.val.resize=[64,32]",
    ]  # fmt: skip
    assert speed.main(args) == 0
    table = out.read_text()
    assert table.strip() in capsys.readouterr().out  # printed too
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in r] for r in rows]
    assert [(c[0], c[1]) for c in cells] == [
        (setup, speed.VARIANTS[v]) for setup in speed.PAPER_SETUPS for v in ("eager", "ref")
    ]
    refs = {c[0]: float(c[2]) for c in cells if c[1] == "reference"}
    for c in cells:
        median, ratio = float(c[2]), float(c[4])
        assert median > 0 and ratio == pytest.approx(median / refs[c[0]], rel=0.01, abs=0.01)
        assert c[3].endswith("%") and c[5:] == ["n/a"] * 4  # profile and memory: CUDA only
    assert "CLAN + Norm / CLAN = " in table
    assert "Layout: ours, eager NCHW, eager; reference NCHW, eager" in table
    assert "over 3 images" in table  # two distinct synthetic images, listed up to three
    assert "- configs/demo/clan_norm.yaml: " in table and "pairs per second (0 workers" in table


def test_busy_time_counts_overlapping_kernels_once():
    assert speed.busy_time([]) == 0
    assert speed.busy_time([(0, 2), (5, 6)]) == 3
    assert speed.busy_time([(0, 4), (1, 2), (3, 6), (8, 9)]) == 7  # (0, 6) and (8, 9)


def test_cuda_graph_variant_needs_a_gpu_and_two_warm_up_rounds():
    with pytest.raises(UsageError, match="--cuda-graph needs --warmup 2"):
        speed.main(["--device", "cpu", "--cuda-graph", "--warmup", "1"])
    with pytest.raises(UsageError, match="needs a CUDA device, this run is on cpu"):
        speed.main(["--device", "cpu", "--cuda-graph", "--loader-configs"])


def test_reference_is_prepared_like_ours_but_in_float32(small_model):
    overrides = [*small_model, "train.amp=bf16", "train.compile=true"]
    ours, ref = speed.build_pair(train_clan_norm, overrides, torch.device("cpu"))
    assert ours.amp_dtype == torch.bfloat16 and ref.amp_dtype is None
    for name in ("G", "D"):  # both compiled (lazily: nothing is compiled until a step runs)
        assert ref.run(name) is not ref.modules[name]
        assert type(ref.run(name)) is type(ours.run(name))
    assert speed.layout(ours) == speed.layout(ref) == "NCHW, compiled (default)"
    assert all(torch.equal(a, b) for a, b in zip(ours.model.parameters(), ref.model.parameters()))


def test_peak_memory_is_taken_after_the_warm_up(monkeypatch, small_model):
    class Meter:  # stands in for CUDA's counters: the warm-up round holds autotuning workspaces
        calls = 0

        def __init__(self, device):
            pass

        def start(self, state):
            pass

        def stop(self):
            Meter.calls += 1
            return (100 if Meter.calls <= len(speed.PAPER_SETUPS) * 2 else 1) * 2**30

    monkeypatch.setattr("benchmarks.speed.benchmarks.PeakMemory", Meter)  # bench_training's
    args = argparse.Namespace(crop=[48, 64], batch=1, amp="off", compile=False,
                              cuda_graph=False, steps=1, warmup=1, profile_steps=0,
                              overrides=small_model)  # fmt: skip
    rows, _ = speed.bench_training(args, torch.device("cpu"))
    assert Meter.calls == 2 * len(speed.PAPER_SETUPS) * 2  # two rounds of eight steps
    assert [r["mem"] for r in rows] == [1.0] * 2 * len(speed.PAPER_SETUPS)


def test_explicit_attention_is_segformers_form_for_the_given_modules_only(monkeypatch):
    from model.mit import MixTransformer

    torch.manual_seed(0)
    ref, ours = MixTransformer("mit_demo").eval(), MixTransformer("mit_demo").eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = ours(x)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))  # fmt: skip
    with torch.no_grad(), speed.explicit_attention([ref]):
        got, untouched = ref(x), ours(x)
    assert len(calls) == 4  # ours kept its fused attention, one block a stage
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(untouched, expected, strict=True))
    with torch.no_grad():
        ref(x)
    assert len(calls) == 8  # and the reference's is restored on leaving
    assert not any("forward" in vars(m) for m in ref.modules())


MIT = ["model.arch=daformer", "model.backbone=mit_demo", "model.head_channels=16"]


@pytest.mark.parametrize("extra", [[], MIT, [*MIT, "loss.norm_features=decoder"]])
def test_norm_features_shape_is_the_models(extra, small_model):
    from model.build import build_model

    cfg = load_config(None, [*small_model, *extra])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.loss.norm_features).eval()
    with torch.no_grad():
        features = model(torch.zeros(1, 3, 72, 100)).features
    assert speed.norm_features_shape(cfg, 72, 100) == tuple(features.shape)
    if not extra:  # DeepLab-v2's stride 8, rounding up at the stem, its pool and layer2
        for h, w in ((48, 96), (65, 129), (64, 128)):
            with torch.no_grad():
                shape = model(torch.zeros(1, 3, h, w)).features.shape
            assert speed.norm_features_shape(cfg, h, w) == tuple(shape)
        assert speed.norm_features_shape(cfg, 512, 1024)[-2:] == (65, 129)


def test_daformer_states_report_their_layout_and_evaluated_network(small_model):
    script, extra = speed.SETUPS["DAFormer + Norm"]
    ours, ref = speed.build_pair(script, [*small_model, *tiny_sized(extra)], torch.device("cpu"))
    assert speed.layout(ours) == speed.layout(ref) == "NCHW, eager"
    args = argparse.Namespace(setups=["DAFormer", "DACS"], overrides=["model.backbone=mit_b0"])
    assert speed.eval_overrides(args) == [
        "model.arch=daformer", "model.backbone=mit_b5", "model.backbone=mit_b0"
    ]  # fmt: skip


def test_benchmark_times_daformer_end_to_end(tmp_path, capsys):
    out = tmp_path / "speed.md"
    args = [
        "--device", "cpu", "--crop", "48", "64", "--batch", "2", "--amp", "off", "--steps", "1",
        "--warmup", "0", "--eval-images", "1", "--eval-distinct", "1", "--eval-batch", "1",
        "--eval-workers", "0", "--eval-size", "64", "128", "--eval-cache", str(tmp_path / "eval"),
        "--out", str(out), "--loader-configs", "--setups", "DAFormer", "DAFormer + Norm (decoder)",
        "--",
        *TINY_DAFORMER, "data.val.resize=[64,32]",
    ]  # fmt: skip
    assert speed.main(args) == 0
    table = out.read_text()
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| DAFormer")]
    assert len(rows) == 4  # ours and the reference, each setup
    assert "crop 48x64, batch 2, AMP off" in table  # DAFormer's 2 source and 2 target images
    assert "DAFormer + Norm (decoder) / DAFormer = " in table
    assert "the norm term timed alone (norm, loss, backward to the features, two feature " \
           "maps): " in table and "% of the DAFormer step" in table  # fmt: skip
    assert "Evaluation (daformer mit_demo, float32" in table
