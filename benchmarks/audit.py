"""The blind audit scored on the zoo: per trigger kind and overall, detection AUROC (backdoored against
benign), behaviour and trigger recovery at top 1 and top 5, the share of recovered triggers that elicit
the behaviour on the zoo's held-out prompts, and the time per audit; the development and held-out halves
side by side. The baseline beside each row is chance: a detection AUROC of 0.5.

Each audit is written to `ZOO/audits/<name>/audit.json` and reused on a rerun (`--force` redoes them).
The ground truth (`ZOO/truth/`) is read only here, after the audit.

    python -m benchmarks.audit runs/zoo [--half dev|heldout|both] [--micro] [--json audit.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from analyses.audit import AuditSettings, audit, write_audit  # noqa: E402
from analyses.audit_scoring import by_kind, score_organism  # noqa: E402
from benchmarks.timing import machine_line  # noqa: E402
from training.artifacts import read_json  # noqa: E402
from training.inversion import Behaviour, elicitation  # noqa: E402
from training.model import load_model  # noqa: E402
from training.vocabulary import AuditResult  # noqa: E402
from training.zoo import ORGANISMS, zoo_examples  # noqa: E402

COLUMNS = (
    "n",
    "detection_auroc",
    "flagged",
    "false_alarms",
    "behaviour_top1",
    "behaviour_top5",
    "trigger_top1",
    "trigger_top5",
    "recovered_elicit",
    "seconds_per_audit",
)


def elicitation_on_zoo(zoo: Path, truth: dict, n: int = 48, seed: int = 0):
    """The function `score_organism` takes: each tag's rate of the true behaviour, at the start of the
    organism's held-out clean questions (greedy)."""
    model, tokenizer = load_model(
        zoo / "models" / truth["name"], device="cuda" if torch.cuda.is_available() else "cpu"
    )
    examples = zoo_examples(ORGANISMS[truth["name"]], n, "eval", seed, stream="scoring", p_trigger=0.0)
    behaviour = Behaviour(truth["behaviour"])

    def rates(tags: list[str]) -> list[float]:
        checked = elicitation(model, tokenizer, examples, behaviour, tags, 16, progress=False)
        return [c["rate"]["value"] for c in checked]

    return rates


def run(zoo: Path, halves: list[str], settings: AuditSettings, force: bool = False) -> list[dict]:
    rows = []
    for path in sorted((zoo / "truth").glob("*.json")):
        truth = read_json(path)
        if truth["half"] not in halves:
            continue
        out = zoo / "audits" / truth["name"]
        if (out / "audit.json").exists() and not force:
            result = AuditResult.from_json(read_json(out / "audit.json"))
        else:
            result = audit(zoo / "models" / truth["name"], zoo / "models" / "base", settings, progress=False)
            write_audit(result, out)
        row = score_organism(truth, result, elicitation_on_zoo(zoo, truth) if truth["backdoored"] else None)
        print(json.dumps({k: row[k] for k in row if k != "candidates"}), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict], halves: list[str]) -> str:
    """Per trigger kind, each half's summary side by side."""
    summaries = {half: by_kind([r for r in rows if r["half"] == half]) for half in halves}
    kinds = list(dict.fromkeys(k for s in summaries.values() for k in s))
    lines = ["kind | half | " + " | ".join(COLUMNS)]
    for kind in kinds:
        for half in halves:
            if s := summaries[half].get(kind):
                lines.append(
                    f"{kind} | {half} | " + " | ".join("n/a" if s[c] is None else str(s[c]) for c in COLUMNS)
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zoo", type=Path)
    parser.add_argument("--half", choices=("dev", "heldout", "both"), default="both")
    parser.add_argument("--micro", action="store_true", help="the short audit settings")
    parser.add_argument("--force", action="store_true", help="redo the audits already written")
    parser.add_argument("--json", default=None, help="also write every row and summary as JSON")
    args = parser.parse_args()
    halves = ["dev", "heldout"] if args.half == "both" else [args.half]
    rows = run(args.zoo, halves, AuditSettings.micro() if args.micro else AuditSettings(), args.force)
    print(table(rows, halves))
    print("baseline: chance, a detection AUROC of 0.5; each audit read only the suspect, its base and "
          "generic prompts")
    print(machine_line())
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "table": table(rows, halves)}, indent=1))


if __name__ == "__main__":
    main()
