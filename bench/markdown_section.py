"""Each benchmark owns one section of BENCHMARKS.md, between `<!-- NAME:start -->` and
`<!-- NAME:end -->`, and rewrites only that section."""

from __future__ import annotations

import os


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(path: str, name: str, body: str) -> None:
    """Replaces (or appends) section `name` of the markdown file at `path` with `body`."""
    start, end = markers(name)
    section = f"{start}\n{body.strip()}\n{end}\n"
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if start in text and end in text:
        before = text[: text.index(start)]
        after = text[text.index(end) + len(end):].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
