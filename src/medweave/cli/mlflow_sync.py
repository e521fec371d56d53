"""medweave-mlflow-sync: copy runs logged offline (logger=mlflow on a compute node) to the team server.

    medweave-mlflow-sync --from logs/mlflow --to http://mlflow-host:5000 [--experiment NAME ...]

Plain argparse, not Hydra: it moves runs, it trains nothing. Safe to run again: runs already copied and
finished are skipped, unfinished ones updated (see medweave.tracking.sync). Exit status 0 when done,
2 when there is no local store or no server (one line on stderr), 1 when a copy fails.
"""

from __future__ import annotations

import argparse
import sys


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="medweave-mlflow-sync", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        help="local store: a folder holding mlflow.db, or sqlite:///FILE",
    )
    parser.add_argument("--to", dest="target", required=True, help="tracking URI of the server")
    parser.add_argument(
        "--experiment", action="append", help="copy only this experiment (repeat for more); default: all"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from medweave.tracking.sync import SyncError, check_server, local_store_uri

    try:
        source = local_store_uri(args.source)
        check_server(args.target)
        from medweave.tracking.sync import sync_store

        summary = sync_store(source, args.target, args.experiment)
    except SyncError as error:
        print(f"medweave-mlflow-sync: {error}", file=sys.stderr)
        return 2
    print(
        f"{summary.copied} copied, {summary.updated} updated, {summary.skipped} skipped: "
        f"{args.source} -> {args.target}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
