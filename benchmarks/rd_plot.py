"""One rate-distortion plot from the ``rd.json`` of several ``tvq eval`` runs: the named curves only (a study
writes dozens of files), each optionally renamed, with the references of the first file.

    python -m benchmarks.rd_plot benchmarks/results/vqrf-lego-h200-rd.json benchmarks/results/lego-h200-rd.json \
        --curves vqad6="VQ-AD 6-bit" hybrid hash12 --out docs/rd-lego-h200.png

A curve NAME is the ``name`` column of rd.json (the file's stem); the first file that has it wins, so the
newest study goes first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def select(tables: list[dict], curves: list[str]) -> list[dict]:
    """The rows of each NAME[=LABEL] curve, from the first table that has it, relabelled."""
    rows = []
    for spec in curves:
        name, _, label = spec.partition("=")
        table = next((t for t in tables if any(r["name"] == name for r in t["rows"])), None)
        if table is None:
            raise SystemExit(f"rd_plot: no curve named {name!r} in the given files")
        rows += [{**r, "name": label or name, "file": f"{id(table)}:{r['file']}"} for r in table["rows"]
                 if r["name"] == name]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", help="rd.json files of tvq eval")
    parser.add_argument("--curves", nargs="+", required=True, help="NAME or NAME=LABEL of each curve to draw")
    parser.add_argument("--title", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from tvq.rd import plot

    tables = [json.loads(Path(p).read_text()) for p in args.tables]
    title = args.title or f"{Path(tables[0]['scene']).name}: {tables[0]['views']} {tables[0]['split']} views"
    plot(Path(args.out), select(tables, args.curves), tables[0].get("refs", []), title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
