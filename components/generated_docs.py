"""Generated README blocks: replace the text between two markers, and the `--write [README]` command line.

Shared by the component reference (components/reference.py) and the config reference
(stacks/config_reference.py); tests compare each block with its generator.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def write_block(readme: Path, begin: str, end: str, block: str) -> bool:
    """Replace `begin`...`end` (markers included) in `readme` with `block`; returns whether it changed."""
    text = readme.read_text()
    start, stop = text.index(begin), text.index(end) + len(end)
    updated = text[:start] + block + text[stop:]
    readme.write_text(updated)
    return updated != text


def main(argv: Sequence[str], begin: str, end: str, markdown: Callable[[], str]) -> int:
    """`--write [README]` updates the block in place; no arguments print it."""
    if argv[:1] == ["--write"]:
        target = Path(argv[1]) if len(argv) > 1 else README
        changed = write_block(target, begin, end, markdown())
        print(f"{target}: {'updated' if changed else 'already up to date'}")
    else:
        print(markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover - a library module
    sys.exit("run python -m components.reference or python -m stacks.config_reference")
