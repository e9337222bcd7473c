"""Write the zoo cards' reference_scores from a results folder's records (no model is evaluated).

After a change that moves scores on purpose (a task version bump, a new protocol), regenerate the
reference run and copy its metrics into every card that a record matches by weights sha256:

    .venv/bin/silc-eval run --suite all --output reports --no-progress --force
    .venv/bin/python model_zoo/update_reference_scores.py reports --suite all

Only records of the card's reference_suite benchmarks are copied; each metric is rounded to 6
digits as the trainer writes them. --suite sets the card's reference_suite first (a freshly trained
model's card names its recipe's evaluation suite, `quick` for the zoo recipes; the zoo's cards
reference `all`). A card without a record for every benchmark is left unchanged (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from silc_eval.core.io import atomic_write_text
from silc_eval.models.zoo import list_zoo
from silc_eval.registry import resolve_suite


def scores_by_sha256(results: Path) -> dict[str, dict[str, dict[str, float | None]]]:
    """Return {weights sha256: {benchmark: {metric: value rounded to 6 digits}}} of every record under results."""
    found: dict[str, dict[str, dict[str, float | None]]] = {}
    for path in sorted((results / "records").glob("*/*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        metrics = {k: None if v is None else round(float(v), 6) for k, v in record["metrics"].items()}
        found.setdefault(record["model"]["sha256"], {})[record["benchmark"]["name"]] = metrics
    return found


def main() -> int:
    """Update every matched card; return the exit status (0, or 2 when the folder holds no records)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results folder (records/<model>/<benchmark>.json)")
    parser.add_argument("--suite", default=None, help="set every matched card's reference_suite to this suite")
    args = parser.parse_args()
    found = scores_by_sha256(args.results)
    if not found:
        print(f"update_reference_scores: no records under {args.results / 'records'}; expected "
              f"records/<model>/<benchmark>.json from silc-eval run", file=sys.stderr)
        return 2
    for entry in list_zoo():
        card_path = entry.folder / "card.yaml"
        card = yaml.safe_load(card_path.read_text(encoding="utf-8"))
        scores = found.get(card["weights"]["sha256"], {})
        if args.suite is not None and scores:
            card["reference_suite"] = args.suite
        suite = card.get("reference_suite", "all")
        wanted = [b.name for b in resolve_suite(suite)]
        missing = [name for name in wanted if name not in scores]
        if missing:
            print(f"{entry.name}: no record for {', '.join(missing)}; card left unchanged", file=sys.stderr)
            continue
        card["reference_scores"] = {name: scores[name] for name in wanted}
        atomic_write_text(card_path, yaml.safe_dump(card, sort_keys=False))
        print(f"{entry.name}: reference_scores of {len(wanted)} benchmarks written to {card_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
