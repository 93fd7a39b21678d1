"""``python -m benchmarks.speed ...``: time every setup's step, the loaders and evaluation."""

from benchmarks.speed import main
from utils.errors import run

raise SystemExit(run(main))
