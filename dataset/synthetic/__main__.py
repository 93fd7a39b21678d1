"""``python -m dataset.synthetic --out DIR ...``: generate a synthetic dataset."""

from dataset.synthetic import main
from utils.errors import run

raise SystemExit(run(main))
