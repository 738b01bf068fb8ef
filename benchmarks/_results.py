"""What the benchmarks share: writing their section of docs/results.md."""

import re
from pathlib import Path


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace the section under `heading` (up to the next '## ' heading) in a markdown file, or append it.
    The file is read right before it is written: other people edit its other sections."""
    text = path.read_text() if path.exists() else "# Results\n"
    block = f"{heading}\n\n{body.strip()}\n"
    match = re.search(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if match:
        text = text[: match.start()] + block + ("\n" if match.end() < len(text) else "") + text[match.end() :]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
