"""A whole training step as one CUDA graph (``train.cuda_graph``): captured once, replayed every
step, so the host launches one graph instead of thousands of kernels.

The step's code is the eager ``train_step`` itself. What a replay cannot redo, the runner
provides instead:
- inputs: each batch is copied into static device buffers that the graph reads;
- step-dependent values: ``state.values(step)`` returns device tensors that the runner fills
  from ``state.schedule(cfg, step)`` before each step (0-dim for a number; a tensor's shape for
  a tensor, such as a self-training step's random draws), and every learning rate is a
  device tensor that the loop fills (``fill_``), read by fused SGD and capturable Adam (or by
  ``ReleasedSGD``, which takes tensor rates too);
- outputs: the logged values live in the graph's own memory and are overwritten by the next
  replay, so each step's are copied out.
The first ``warmup`` steps run eagerly on a side stream (they are real steps; cuDNN picks its
algorithms and the optimizers create their state), then the next step is captured and replayed.
Capture records kernels without running them, so the captured step is replayed at once.

``CudaGraphBackend`` is the real one. ``tests/test_graphs.py`` runs the same runner on the CPU
with a backend whose "graph" replays the step's Python code with the arguments of the capture,
which is what a CUDA graph does with everything that is not a device tensor: a step that reads
its step number, a batch that is not copied in or an output that is not copied out gives other
losses and weights than eager there too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from dataset.datasets import Batch
from utils.errors import UserError

log = logging.getLogger(__name__)


class GraphShapeError(UserError, ValueError):
    """A batch of another shape than the captured one."""


class Graph(Protocol):
    def replay(self) -> None: ...


class CudaGraphBackend:
    """Warm-up on a side stream and capture with ``torch.cuda.graph``, as PyTorch's
    whole-network capture recipe does."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, fn: Callable[[], dict[str, Any]]) -> tuple[Graph, dict[str, Any]]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out


def make_capturable(optimizers: dict[str, torch.optim.Optimizer], device: torch.device) -> None:
    """Learning rates as device tensors, and an update with no host sync that reads them there:
    ``torch.optim.SGD`` fused, ``torch.optim.Adam`` fused and capturable (its step count on the
    device); ``ReleasedSGD`` takes tensor rates as it is. Applied again after a checkpoint's
    groups (plain numbers) are loaded."""
    from utils.training.optim import ReleasedSGD  # (utils.training.optim imports nothing from here)

    for name, opt in optimizers.items():
        if not isinstance(opt, (torch.optim.SGD, torch.optim.Adam, ReleasedSGD)):
            raise TypeError(f"train.cuda_graph: optimizer {name} ({type(opt).__name__}) has no "
                            f"capturable form here")  # fmt: skip
        for group in opt.param_groups:
            if not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
            if isinstance(opt, (torch.optim.SGD, torch.optim.Adam)):
                group["fused"], group["foreach"] = True, False
            if isinstance(opt, torch.optim.Adam):
                group["capturable"] = True
                for p in group["params"]:
                    slots = opt.state.get(p, {})
                    if "step" in slots:
                        slots["step"] = slots["step"].to(device=p.device, dtype=torch.float32)


class GraphedStep:
    """``train_step`` run as one CUDA graph (module docstring); called as the step itself."""

    def __init__(
        self, train_step: Callable[..., dict[str, Any]], backend: Any, warmup: int = 3
    ) -> None:
        if warmup < 1:
            raise ValueError("GraphedStep: warmup must be >= 1 (the optimizers' state must exist)")
        self.train_step, self.backend, self.warmup = train_step, backend, warmup
        self.warmed = 0
        self.graph: Graph | None = None
        self.out: dict[str, Any] = {}
        self.source: Batch | None = None
        self.target: Batch | None = None

    def __call__(
        self, state: Any, source: Batch, target: Batch | None, step: int
    ) -> dict[str, torch.Tensor | float]:
        if self.source is None:
            self._allocate(state, source, target)
        assert self.source is not None
        self._load(state, source, target, step)
        if self.graph is None and self.warmed < self.warmup:
            self.warmed += 1
            with self.backend.warmup():
                out = self.train_step(state, self.source, self.target, step)
            return _copied(out)
        if self.graph is None:
            for opt in state.optimizers.values():  # the graph's backward allocates the grads
                opt.zero_grad(set_to_none=True)
            self.graph, self.out = self.backend.capture(
                lambda: self.train_step(state, self.source, self.target, step)
            )
            log.info("captured the training step as a CUDA graph at step %d", step)
        self.graph.replay()
        return _copied(self.out)

    def _allocate(self, state: Any, source: Batch, target: Batch | None) -> None:
        """Static buffers shaped like the first batches (images in the state's layout), the
        scalars' tensors, and the optimizers' capturable form."""
        make_capturable(state.optimizers, state.device)
        values = state.schedule(state.cfg, 0)
        state.static_values = {
            k: torch.zeros(torch.as_tensor(v).shape, device=state.device,
                           dtype=v.dtype if torch.is_tensor(v) else torch.float32)
            for k, v in values.items()
        }  # fmt: skip
        self.source = _static_batch(state, source)
        self.target = None if target is None else _static_batch(state, target)

    def _load(self, state: Any, source: Batch, target: Batch | None, step: int) -> None:
        pairs = ((self.source, source, "source"), (self.target, target, "target"))
        for static, batch, name in pairs:
            if static is None:
                continue
            for field in ("image", "label"):
                dst, src = getattr(static, field), getattr(batch, field)
                if dst is None:
                    continue
                if src is None or dst.shape != src.shape:
                    raise GraphShapeError(
                        f"train.cuda_graph: the {name} {field}s changed shape from "
                        f"{tuple(dst.shape)} to {None if src is None else tuple(src.shape)}; a "
                        f"CUDA graph replays one shape (set data.{name}.crop, or "
                        f"train.cuda_graph=false)"
                    )
                dst.copy_(src, non_blocking=True)
        for key, value in state.schedule(state.cfg, step).items():
            static = state.static_values[key]
            if torch.is_tensor(value):  # drawn on the host (a self-training step's randomness)
                static.copy_(value, non_blocking=True)
            else:
                static.fill_(value)


def _static_batch(state: Any, batch: Batch) -> Batch:
    image = state.to_device(batch.image).clone(memory_format=torch.preserve_format)
    label = None if batch.label is None else state.to_device(batch.label).clone()
    return Batch(image, label, list(batch.names))


def _copied(out: dict[str, Any]) -> dict[str, torch.Tensor | float]:
    """The step's logged values, tensors copied out of memory the next step overwrites."""
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in out.items()}
