"""What the code's comments may not carry: the history of experiments (session numbers) and one machine's
name belong in BENCHMARKS.md / dev/LOG.md, where they are dated; a comment says why in a line or two."""
import re

from conftest import ROOT

HISTORY = re.compile(r"\bsessions?\b|\bEPYC\b|\bXeon\b|Skylake|family \d+ model \d+", re.IGNORECASE)


def test_no_session_numbers_or_cpu_names_in_the_package():
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}"
            for p in sorted((ROOT / "src" / "llmrecipe").rglob("*")) if p.suffix in (".py", ".yaml")
            for i, line in enumerate(p.read_text().splitlines(), 1) if HISTORY.search(line)]
    assert not hits, "\n".join(hits)
