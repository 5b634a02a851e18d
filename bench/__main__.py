"""slidefarm's benchmarks: ``python -m bench`` (or ``make bench``).

Each benchmark runs its baseline and slidefarm side by side in the same run,
with the same server settings, repeats both, and prints medians, min and
max and the ratio; the machine is shared and noisy, so ratios are what to
compare. Results also go to ``bench/results.json``.

Needs PostgreSQL and Redis (``SLIDEFARM_BENCH_PG_URL``,
``SLIDEFARM_BENCH_REDIS_URL``) and ``wrk`` (Debian package) for HTTP load.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from bench import cases
from bench.claim import claim
from bench.harness import Environment, Result
from bench.peering import peers
from bench.scaling import PGBOUNCER_POOL, scaling
from bench.split import split_render

ROOT = Path(__file__).resolve().parent.parent
ALL = [
    "status_read",
    "status_read_nocache",
    "submit",
    "dispatch",
    "render",
    "scale",
    "worker_memory",
    "seed_reads",
    "claim",
    "scaling",
    "split_render",
    "peers",
]
SEPARATE = {"claim": claim, "scaling": scaling, "split_render": split_render, "peers": peers}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names", nargs="*", default=ALL, help=f"benchmarks to run ({', '.join(ALL)})"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument(
        "--duration", type=int, default=4, help="seconds of load per HTTP run (default 4)"
    )
    parser.add_argument(
        "--scale-rows",
        type=int,
        default=1_000_000,
        help="jobs in the large table of the scale benchmark",
    )
    parser.add_argument(
        "--scaling-counts",
        type=lambda v: [int(n) for n in v.split(",")],
        help="host counts of the scaling curve, comma-separated (default 1,2,4,8,16,32)",
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="scaling: run the curve a second time with every host through PgBouncer",
    )
    parser.add_argument(
        "--pgbouncer-pool",
        type=int,
        default=PGBOUNCER_POOL,
        help=f"scaling --pgbouncer: PgBouncer's default_pool_size (default {PGBOUNCER_POOL})",
    )
    parser.add_argument(
        "--e2e-jobs",
        type=int,
        default=300,
        help="no-op jobs per end-to-end run of the peers benchmark (default 300)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()
    unknown = set(args.names) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    # Stopped (SIGTERM, a timeout): unwind, so that every farm, namespace,
    # cgroup and server the benchmarks brought up goes with them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    results: list[Result] = []
    with Environment() as env:
        print(f"slidefarm benchmarks on {env.describe()}")
        for name in args.names:
            print(f"\n== {name}", flush=True)
            run = SEPARATE.get(name) or getattr(cases, name)
            result = run(env, args)
            results.append(result)
            print(result.line(), flush=True)
    # The entries of benchmarks not run this time stay (``python -m bench
    # scaling`` alone replaces only the ``scaling`` entry).
    ran = {r.name for r in results}
    kept = []
    if args.output.exists():
        try:
            kept = [e for e in json.loads(args.output.read_text()) if e.get("name") not in ran]
        except (ValueError, AttributeError):
            kept = []
    entries = kept + [r.as_json() for r in results]
    args.output.write_text(json.dumps(entries, indent=2) + "\n")
    print(f"\n{'name':<22}{'baseline':>14}{'slidefarm':>14}{'ratio':>9}  goal          pass")
    for r in results:
        print(r.row())
    print(f"\nwrote {args.output} in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
