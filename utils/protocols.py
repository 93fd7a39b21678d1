"""Where the paper's text and the authors' released code differ, read off the configs.

``configs/gta5_to_cityscapes/clan_norm.yaml`` is the paper's protocol (with the defaults), and
``configs/gta5_to_cityscapes/released/clan_norm.yaml`` the released code's; every key whose
resolved value differs is a row. The table in ``docs/protocols.md`` is this module's output (a
test keeps them equal), so it cannot drift from the configs:

    python -m utils.protocols                              # print the table
    python -m utils.protocols --readme docs/protocols.md   # rewrite it between its markers
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from utils.config import load_config, to_dict
from utils.errors import add_debug_flag, run
from utils.readme import block, markers, update_block

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "configs" / "gta5_to_cityscapes" / "clan_norm.yaml"
RELEASED = ROOT / "configs" / "gta5_to_cityscapes" / "released" / "clan_norm.yaml"
NAME, SOURCE = "paper-vs-released", "python -m utils.protocols"
START, END = markers(NAME, SOURCE)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


# Where a run's files go: each config family has its own folder, which is no protocol choice.
WHERE = ("train.out_dir", "train.run_name")


def differences(paper: Path = PAPER, released: Path = RELEASED) -> list[tuple[str, Any, Any]]:
    """(key, paper value, released value) for every key whose resolved values differ, but
    where the runs are written."""
    a = flatten(to_dict(load_config(paper)))
    b = flatten(to_dict(load_config(released)))
    return [(key, a[key], b[key]) for key in a if a[key] != b[key] and key not in WHERE]


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...")


def markdown(rows: list[tuple[str, Any, Any]]) -> str:
    lines = ["| key | paper text | released code |", "|---|---|---|"]
    lines += [f"| `{key}` | `{_show(a).strip()}` | `{_show(b).strip()}` |" for key, a, b in rows]
    return "\n".join(lines)


def readme_block() -> str:
    """The table's generated block, markers included."""
    return block(NAME, SOURCE, markdown(differences()))


def update_readme(path: Path) -> bool:
    """Rewrite the block between the markers of ``path``; True if it changed."""
    return update_block(path, NAME, readme_block())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readme", type=Path, help="rewrite the table in this file")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.readme:
        changed = update_readme(args.readme)
        print(f"{args.readme}: {'updated' if changed else 'already up to date'}")
    else:
        print(markdown(differences()))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
