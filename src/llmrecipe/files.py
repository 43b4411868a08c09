"""Atomic file writes (a crash leaves the old file or the new one, never half of either), safetensors
included."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, fsync it, rename it over `path`, then fsync the
    folder.

    Why each step: the temp file beside the target (same filesystem) makes the rename atomic; fsync before
    the rename keeps a crash from leaving the new name on unwritten blocks (a zero-length model file after
    a power cut); fsync of the folder after it makes the rename itself durable. Without the last one a
    stage's `done.json` could survive a power cut while the rename of the model it vouches for did not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def unique_tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop names that alias an earlier tensor (the tied LM head), as safetensors requires."""
    seen, out = set(), {}
    for k, v in sd.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key not in seen:
            seen.add(key)
            out[k] = v.detach().contiguous().cpu()
    return out


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """safetensors.load_file with damage reported as one line naming the file (not a Rust traceback)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e}); it is damaged or incomplete"
                         ) from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    atomic_write(path, lambda tmp: save_file(unique_tensors(tensors), tmp, metadata=metadata))


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a folder's entry to disk (a renamed folder is durable only once its parent is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_jsonl(path: str | Path, drop_bad: bool = False) -> list[dict]:
    """Rows of an append-only JSONL file (metrics, eval records, the judge cache), each a JSON object.

    A writer killed mid-line leaves a torn last line: it is dropped, with a note, so the next run goes on
    (its row is simply redone). A bad line anywhere else is damage, not a torn write: an error naming the
    file and the line — or, with `drop_bad` (a log whose rows are redone anyway), dropped with a note.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError(f"expected a JSON object, got a {_JSON_NAMES.get(type(row), 'value')}")
        except (ValueError, TypeError) as e:
            why = f"not valid JSON ({e.msg})" if isinstance(e, json.JSONDecodeError) else str(e)
            if i == len(lines):  # no newline after it: the last write was cut short
                print(f"note: {path}: dropped a torn last line {i} (an interrupted write)", file=sys.stderr)
                break
            if drop_bad:
                print(f"note: {path}, line {i}: dropped ({why})", file=sys.stderr)
                continue
            raise ValueError(f"{path}, line {i}: {why}") from None
        rows.append(row)
    return rows


def append_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Append whole lines and fsync: after a kill the file ends with complete rows, or one torn line that
    `read_jsonl` drops. The first append also fsyncs the folder: the new file's name is a folder entry, and
    without it a power cut can keep the rows' blocks and lose the file (a judge cache's paid-for verdicts)."""
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    if created:
        fsync_path(path.parent)


class FolderBusy(ValueError):
    """Another live process holds the run folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | Path):
    """One writer per run folder: an exclusive flock on FOLDER/.lock for the duration.

    Two runs on one --out would delete each other's checkpoints and interleave metrics. flock is released
    by the kernel when its process dies (even by SIGKILL), so a lock is never stale; the file keeps the
    holder's pid for the error message only.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise FolderBusy(f"{folder} is in use by another llmrecipe process (pid {holder}): wait for it "
                             "to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_json(path: str | Path, kind: type = dict, what: str = "") -> object:
    """A JSON file whose top level must be `kind`; damage is one line naming the file (not a decoder's
    'Expecting property name … line 1 column 2' with no file in it)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}){what}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}){what}") from None
    if not isinstance(obj, kind):
        raise ValueError(f"{path}: expected a JSON {_JSON_NAMES.get(kind, kind.__name__)}, "
                         f"got {_JSON_NAMES.get(type(obj), type(obj).__name__)}{what}")
    return obj


_JSON_NAMES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


# ---- checksums of finished model and adapter folders ----
# Checkpoints carry a manifest in state.json; a finished folder's weights carry theirs in CHECKSUMS, so a
# flipped bit is one clear error on load, not a loss of 1e25 and a saved adapter.
CHECKSUMS = "checksums.json"


def write_checksums(folder: str | Path, names: list[str]) -> None:
    folder = Path(folder)
    atomic_write_json(folder / CHECKSUMS, {n: {"bytes": (folder / n).stat().st_size,
                                               "sha256": sha256_file(folder / n)} for n in names})


def verify_checksum(path: str | Path) -> None:
    """Check `path` against its folder's checksums.json (folders written before it existed pass)."""
    path = Path(path)
    record = path.parent / CHECKSUMS
    if not record.is_file():
        return
    want = read_json(record).get(path.name)
    if not isinstance(want, dict):
        return
    size = path.stat().st_size
    if size != want.get("bytes"):
        raise ValueError(f"{path}: {size:,} bytes, {CHECKSUMS} says {want.get('bytes')} (truncated or "
                         "replaced?): restore the file or retrain")
    if sha256_file(path) != want.get("sha256"):
        raise ValueError(f"{path}: does not match its SHA-256 in {CHECKSUMS} (damaged): restore the file "
                         "or retrain")


# ---- where a command may write ----

def _existing(spec) -> list[Path]:
    """The paths on disk an input names: a path, a glob's fixed part, or a list of them (hub ids: none)."""
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    out = []
    for s in specs:
        if s is None or s == "":
            continue
        s = str(s)
        for i, ch in enumerate(s):  # a glob: its folder part
            if ch in "*?[":
                s = s[:i].rsplit("/", 1)[0] if "/" in s[:i] else "."
                break
        p = Path(s)
        if p.exists():
            out.append(p.resolve())
    return out


def check_out(out: str | Path, inputs: dict[str, object]) -> None:
    """An --out that is, contains or lies inside one of the command's inputs is an error: writing there
    would replace or mix with what the command reads (`merge --out` into its own base, `onpolicy --out`
    over its data)."""
    o = Path(out).resolve()
    for flag, spec in inputs.items():
        for p in _existing(spec):
            if o == p or o in p.parents or p in o.parents:
                rel = "is" if o == p else ("lies inside" if p in o.parents else "contains")
                raise ValueError(f"--out {out} {rel} the input {flag} {p}: choose an --out outside it, "
                                 "so that no input is overwritten")


# Files that say what kind of artefact a folder holds: the first kind one of whose sets is all there.
_KINDS = (("a llmrecipe run (llmrecipe run)", (("results.json",), ("data", "base/done.json"))),
          ("a model folder", (("model.json",),)), ("an adapter folder", (("adapter_config.json",),)),
          ("a token shard folder (llmrecipe prepare)", (("meta.json",),)),
          ("a Hugging Face folder", (("config.json", "model.safetensors"),)))


def folder_kind(folder: str | Path) -> str | None:
    """What a folder holds (None: missing or empty but for a lock file)."""
    folder = Path(folder)
    if not folder.is_dir() or not [p for p in folder.iterdir() if p.name != ".lock"]:
        return None
    for kind, sets in _KINDS:
        if any(all((folder / m).exists() for m in names) for names in sets):
            return kind
    return "other files"


def check_fresh_out(out: str | Path, allowed: str | None = None, flag: str = "--out") -> bool:
    """An output folder must be missing or empty, or hold `allowed` (this command's own earlier output,
    which it then replaces); returns whether it replaces one. Anything else is someone's work: an error."""
    kind = folder_kind(out)
    if Path(out).exists() and not Path(out).is_dir():
        raise FileExistsError(f"{flag} {out}: exists and is not a folder")
    if kind is None:
        return False
    if allowed is not None and kind == allowed:
        return True
    raise FileExistsError(f"{flag} {out}: already holds {kind}; choose a new folder (nothing there is "
                          "overwritten)")
