"""The package's layers point one way: data/ reads files, world/ generates data, eval/ and train/ use them,
recipe/cli sit on top. An import the other way (data/ or world/ reaching up into eval/, train/ or the
recipe) is what makes a module impossible to read or test alone."""
import ast
from pathlib import Path

import llmrecipe

PKG = Path(llmrecipe.__file__).parent
TOP = ("recipe", "cli", "serve", "report")


def _imports(path: Path) -> set[str]:
    """Every llmrecipe module `path` imports, as dotted names relative to the package (`eval.harness`),
    including imports inside functions."""
    here = path.relative_to(PKG).with_suffix("").parts
    package = here[:-1] if here[-1] != "__init__" else here[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - (node.level - 1)])
                mod = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("llmrecipe"):
                mod = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import x` / `from .world import cast` name modules too
                out.add(".".join(mod + [alias.name]) if (PKG.joinpath(*mod, alias.name)).exists()
                        or PKG.joinpath(*mod, alias.name + ".py").exists() else ".".join(mod))
        elif isinstance(node, ast.Import):
            out |= {".".join(a.name.split(".")[1:]) for a in node.names if a.name.startswith("llmrecipe.")}
    return {m for m in out if m}


def _arrows(sub: str) -> dict[str, set[str]]:
    return {str(p.relative_to(PKG)): _imports(p) for p in sorted((PKG / sub).rglob("*.py"))}


def test_the_helper_sees_relative_absolute_and_function_level_imports(tmp_path):
    found = _imports(PKG / "world" / "instructions.py")
    assert {"ifeval_rules", "world.cast", "data.mcq"} <= found, found
    assert "eval.ifeval" in _imports(PKG / "eval" / "__init__.py")
    assert "world.datasets" in _imports(PKG / "recipe.py")


def test_no_upward_import_from_data_or_world():
    for sub, forbidden in (("data", ("eval", "train", "world") + TOP), ("world", ("eval", "train") + TOP)):
        for module, imported in _arrows(sub).items():
            up = sorted(m for m in imported if m.split(".")[0] in forbidden)
            assert not up, f"{module} imports {up}: {sub}/ must not depend on the layers above it"
