"""Pin released image digests into a stack file, keeping its comments: the release workflow's promotion step.

    python -m stacks.pin_images --stack test inference.image=sha256:<64 hex> gateway.image=sha256:<64 hex>

Each argument is the config key of an image section (as in `PlatformConfig.images()`, e.g. `inference.image`,
`models[1].image`, `gateway.image`) and the digest the release workflow signed and promoted. The section's
`digest:` is replaced, or added beside its `repository:`; every other line of the file stays as written. The
result is validated like any stack (`stacks/config.py`), so a digest for a key the stack does not run is an
error naming the key. Exit status 2 on bad input, with one line per problem.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from .config import ConfigError, path_parts, shown
from .render import REPO_ROOT, StackFileError, stack_file, validate_stack

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(part, int):
        return node.value[part] if isinstance(node, yaml.SequenceNode) and part < len(node.value) else None
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((value for key, value in node.value if key.value == part), None)


def pin_digest(text: str, key: str, digest: str) -> str:
    """`text` (a stack file) with the image section at config key `key` pinned to `digest`; ValueError if absent."""
    if not _DIGEST.match(digest):
        raise ValueError(f"{key}: {shown(digest)} is not a digest; allowed: sha256:<64 lowercase hex>")
    parts = path_parts(key)
    node = _child(yaml.compose(text), "config")
    node = _child(node, f"inferforge:{parts[0]}") if node is not None else None
    for part in parts[1:]:
        node = _child(node, part) if node is not None else None
    if not isinstance(node, yaml.MappingNode):
        raise ValueError(f"inferforge:{key}: no such image section in the stack file; allowed: a key that sets an "
                         "image's repository (inference.image, gateway.image, models[<i>].image, ...)")
    existing = _child(node, "digest")
    lines = text.splitlines(keepends=True)
    if existing is not None:  # replace the scalar in place
        start, end = existing.start_mark, existing.end_mark
        if start.line != end.line:
            raise ValueError(f"inferforge:{key}.digest spans lines; allowed: a one-line scalar")
        line = lines[start.line]
        lines[start.line] = line[:start.column] + digest + line[end.column:]
        return "".join(lines)
    repository = next(((k, v) for k, v in node.value if k.value == "repository"), None)
    if repository is None:
        raise ValueError(f"inferforge:{key}.repository is not in the stack file; allowed: an image section with "
                         "its repository")
    if node.flow_style:  # {repository: x, tag: y} -> {repository: x, tag: y, digest: ...}
        end = node.end_mark
        line = lines[end.line]
        lines[end.line] = line[:end.column - 1] + f", digest: \"{digest}\"" + line[end.column - 1:]
        return "".join(lines)
    key_node = repository[0]
    indent = " " * key_node.start_mark.column
    lines.insert(key_node.start_mark.line + 1, f"{indent}digest: \"{digest}\"\n")
    return "".join(lines)


def main(argv: list[str] | None = None, root: Path = REPO_ROOT) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacks.pin_images", description=__doc__.split("\n")[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("pins", nargs="+", metavar="KEY=DIGEST")
    args = parser.parse_args(argv)
    path = stack_file(args.stack, root)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"error: {path.name}: {exc.strerror}", file=sys.stderr)
        return 2
    problems = []
    for pin in args.pins:
        key, _, digest = pin.partition("=")
        try:
            text = pin_digest(text, key, digest)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        print("\n".join(f"error: {p}" for p in problems), file=sys.stderr)
        return 2
    previous = path.read_text(encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    try:
        validate_stack(args.stack, root=root)
    except (ConfigError, StackFileError) as exc:
        path.write_text(previous, encoding="utf-8")  # never leave an invalid stack file behind
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path.name}: pinned {', '.join(p.partition('=')[0] for p in args.pins)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
