"""The documents stay a front door and a reference: README short with the set-up commands first, every page it
links present, the config reference equal to what the code accepts, BENCHMARKS current and short."""
import dataclasses
import re
import subprocess
import sys
import typing

from conftest import ROOT

from llmrecipe.data.prepare import PrepareConfig
from llmrecipe.recipe import EvalConfig
from llmrecipe.train import CONFIGS
from llmrecipe.train.onpolicy import OnPolicyConfig

DOCS = ROOT / "docs"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().split("\n")
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the detail to docs/"
    first = "\n".join(lines[:40])
    assert "bash scripts/demo.sh" in first and "bash .ci/run" in first, "the set-up commands left lines 1-40"
    assert not re.search(r"\bsession \d", "\n".join(lines), re.I), "README names a development session"


def test_every_local_link_resolves():
    pages = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *DOCS.glob("*.md")]
    linked = set()
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"
            linked.add(path)
    missing = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not missing, f"docs pages nobody links: {missing}"


def test_benchmarks_is_a_reference_and_the_history_is_in_the_log():
    assert len((ROOT / "BENCHMARKS.md").read_text().split("\n")) <= 300
    log = (ROOT / "dev" / "LOG.md").read_text()
    assert "not adopted" in log  # the negative results moved with the rest of the history


def _keys(prefix: str, cls, wired: set[str]) -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.name == "preset" or key in wired:
            continue
        out += _keys(key + ".", hints[f.name], wired) if dataclasses.is_dataclass(hints[f.name]) else [key]
    return out


def test_the_config_reference_lists_every_key_and_is_what_the_generator_prints():
    """`grep -c '^| \\`'` of docs/config.md equals the dataclasses' keys; the page is the generator's."""
    wired = {"prepare.out", "sft.base", "dpo.sft", "rl.model", "onpolicy.model", "onpolicy.data"}
    pre = CONFIGS["pretrain"]()
    expected = (_keys("model.", type(pre.model), wired) + _keys("pretrain.", type(pre.train), wired)
                + [k for s in ("sft", "dpo", "rl") for k in _keys(f"{s}.", CONFIGS[s], wired)]
                + _keys("prepare.", PrepareConfig, wired) + _keys("onpolicy.", OnPolicyConfig, wired)
                + _keys("eval.", EvalConfig, wired))
    page = (DOCS / "config.md").read_text()
    documented = re.findall(r"^\| `([\w.]+)` \|", page, re.M)
    assert len(documented) == len(re.findall(r"^\| `", page, re.M)) == len(expected)
    assert documented == expected
    made = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_reference.py")],
                          capture_output=True, text=True, check=True).stdout
    assert made == page, "docs/config.md is stale: python scripts/config_reference.py > docs/config.md"


def test_every_documented_key_is_accepted_by_set():
    """What the reference lists, `run --set` takes (checked on the resolved configs, nothing runs)."""
    from llmrecipe.config import apply_overrides
    from llmrecipe.recipe import split_overrides
    from llmrecipe.train import stage_config

    page = (DOCS / "config.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| [^|]+ \| [^|]+ \| ([^|]+) \|", page, re.M)
    configs = {s: stage_config(s, "tiny") for s in ("pretrain", "sft", "dpo", "rl")}
    configs.update(prepare=PrepareConfig(source="", out=""), onpolicy=OnPolicyConfig(), eval=EvalConfig())
    checked = 0
    for key, tiny in rows:
        value = tiny.strip().strip('"')
        if value in ("None", "") or value.startswith("[") or "CPUs" in value:
            continue
        (stage, overrides), = ((s, o) for s, o in split_overrides({key: value}).items() if o)
        apply_overrides(configs["pretrain" if stage == "model" else stage], overrides)
        checked += 1
    assert checked > 100, checked
