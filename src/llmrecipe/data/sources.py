"""Rows from the hub (HF `datasets`, streaming) or from local files in the hub's schema.

Every stage reads its data through `iter_rows`, so every stage accepts the same inputs: a hub id, or
local parquet / jsonl / json / txt files (a folder, a glob, or paths). Each row comes with the file and
row number it came from, so that bad input can be reported exactly.
"""
from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".txt", ".jsonl.gz")


class DataError(ValueError):
    """Bad input data; the message names the file, row and field."""


@dataclass
class Row:
    source: str  # file path or hub id
    index: int  # 1-based row (line for jsonl) within `source`
    data: dict

    def where(self, field: str | None = None) -> str:
        return f"{self.source}, row {self.index}" + (f", field {field!r}" if field else "")


def is_local(spec: str | list[str]) -> bool:
    specs = [spec] if isinstance(spec, str) else spec
    return all(Path(s).exists() or any(ch in s for ch in "*?[") or s.endswith(LOCAL_SUFFIXES) for s in specs)


def resolve_files(spec: str | list[str]) -> list[Path]:
    """Expand folders and globs into a sorted list of data files; error if nothing is found."""
    specs = [spec] if isinstance(spec, str) else spec
    files: list[Path] = []
    for s in specs:
        p = Path(s)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(LOCAL_SUFFIXES))
        elif any(ch in s for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(s, recursive=True) if f.endswith(LOCAL_SUFFIXES))
        elif p.is_file():
            if not p.name.endswith(LOCAL_SUFFIXES):  # read as prose, a .csv would train on its commas
                raise DataError(f"{s}: unsupported file type (give .parquet, .jsonl, .json or .txt files; "
                                "a .csv converts with pandas: pd.read_csv(f).to_json(out, orient='records', "
                                "lines=True))")
            found = [p]
        else:
            raise DataError(f"{s}: no such file or folder")
        if not found:
            raise DataError(f"{s}: no .parquet/.jsonl/.json/.txt files found")
        files.extend(found)
    return files


def iter_rows(spec: str | list[str], split: str = "train", config: str | None = None) -> Iterator[Row]:
    """Rows of a hub data set (streamed) or of local files."""
    if is_local(spec):
        for f in resolve_files(spec):
            yield from _iter_file(f)
    else:
        yield from _iter_hub(spec, split, config)


def _iter_hub(name: str, split: str, config: str | None) -> Iterator[Row]:
    import datasets

    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    for i, row in enumerate(ds, start=1):
        yield Row(f"{name}[{split}]", i, row)


def _iter_file(path: Path) -> Iterator[Row]:
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    name = path.name
    if name.endswith(".parquet"):
        yield from _iter_parquet(path)
    elif name.endswith((".jsonl", ".jsonl.gz")):
        yield from iter_jsonl(path)
    elif name.endswith(".json"):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if isinstance(rows, dict):  # {"data": [...]} or column-oriented exports
            rows = rows.get("data", rows.get("rows", [rows]))
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        for i, r in enumerate(rows, start=1):
            if not isinstance(r, dict):
                raise DataError(f"{path}, row {i}: expected a JSON object, got {type(r).__name__}")
            yield Row(str(path), i, r)
    else:  # .txt: the whole file is one document
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:  # never replaced silently: the model would learn the U+FFFDs
            line = data.count(b"\n", 0, e.start) + 1
            raise DataError(f"{path}, line {line}: not UTF-8 text ({e.reason} at byte {e.start}); re-encode "
                            "it as UTF-8") from None
        yield Row(str(path), 1, {"text": text})


def iter_jsonl(path: Path) -> Iterator[Row]:
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        for i, raw in enumerate(f, start=1):  # bytes, decoded line by line: an error names its own line
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}, line {i}: not UTF-8 text ({e.reason} at byte {e.start} of the "
                                "line); re-encode it as UTF-8") from None
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {i}: not valid JSON ({e.msg})") from None
            if not isinstance(r, dict):
                raise DataError(f"{path}, line {i}: expected a JSON object, got {type(r).__name__}")
            yield Row(str(path), i, r)


def _iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    i = 0
    batches = pf.iter_batches(batch_size=1024)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # a damaged page or column chunk inside an otherwise readable file
            raise DataError(f"{path}: damaged parquet data after row {i} ({e})") from None
        for r in batch.to_pylist():
            i += 1
            yield Row(str(path), i, r)


def text_of(row: Row, field: str = "text") -> str:
    """The text column of a pre-training row, or a clear error."""
    if field not in row.data:
        columns = ', '.join(map(str, row.data)) or 'none'
        raise DataError(f"{row.where()}: no {field!r} column (columns: {columns})")
    text = row.data[field]
    if not isinstance(text, str):
        raise DataError(f"{row.where(field)}: expected a string, got {type(text).__name__}")
    return text
