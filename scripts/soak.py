"""Soak test: a 4-node testnet under continuous load, one node SIGKILLed at a random moment
again and again (the primary about one time in three), restarted after a random pause, and now
and then a node frozen (SIGSTOP/SIGCONT) or two killed at once.

At the end (and every --check-every kills) it waits for the nodes to converge and checks, with
the ledgers opened read-only: one hash chain everywhere, and every transaction a node
acknowledged as committed is in every ledger at the position of its receipt. Prints one line per
event and a summary; exit status 0 only if every check passed. The seed is printed so that the
schedule (not the timing) can be replayed with --seed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.cluster import Cluster
from tests.recovery import harness


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=60, help="SIGKILLs in all (default 60)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=4, help="client threads")
    parser.add_argument("--check-every", type=int, default=20, help="kills between checks")
    parser.add_argument("--dir", type=Path, default=None, help="testnet dir (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the testnet dir")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    print(f"soak: seed {seed}, {args.kills} kills", flush=True)
    base = args.dir or Path(tempfile.mkdtemp(prefix="phalanx-soak-"))
    cluster = harness.start(base / "testnet")
    started = time.monotonic()
    try:
        kills = run(cluster, rng, args)
        cluster.down()
        report = harness.check_ledgers(cluster, LOAD.acked)
    except BaseException:
        print(harness.log_tails(cluster, 40), file=sys.stderr)
        print(f"soak: FAILED (seed {seed}, dir {base})", file=sys.stderr)
        raise
    finally:
        cluster.down()
    elapsed = time.monotonic() - started
    print(
        f"soak: OK seed {seed}: {kills} kills in {elapsed:.0f} s; {report.acked_checked} "
        f"acknowledged transactions checked in all 4 ledgers; head seq {report.head_seq}, "
        f"{report.tx_count} transactions; client errors during crashes {LOAD.errors}",
        flush=True,
    )
    if not args.keep and args.dir is None:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0


LOAD: harness.Load


def run(cluster: Cluster, rng: random.Random, args: argparse.Namespace) -> int:
    global LOAD
    names = harness.names(cluster)
    LOAD = harness.Load(cluster, workers=args.workers, prefix=f"soak-{rng.random()}").start()
    kills = 0
    try:
        while kills < args.kills:
            before = kills
            time.sleep(rng.uniform(0.3, 2.0))
            event = rng.random()
            if event < 0.1:
                kills += kill_two(cluster, rng, names)
            elif event < 0.15:
                freeze_one(cluster, rng, names)
            else:
                kills += kill_one(cluster, rng, names)
            if kills // args.check_every > before // args.check_every or kills >= args.kills:
                checkpoint(cluster, names, kills)
    finally:
        LOAD.stop()
    harness.commit_one(cluster, names[0], f"soak-final-{rng.random()}", timeout_ms=30_000)
    cluster.wait_same_head(names, min_seq=1, timeout_s=120)
    return kills


def kill_one(cluster: Cluster, rng: random.Random, names: list[str]) -> int:
    victim = cluster.primary_name() if rng.random() < 0.33 else rng.choice(names)
    LOAD.mark_down(victim)
    cluster.kill(victim)
    pause = rng.uniform(0.0, 3.0)
    print(f"  kill -9 {victim}, restart after {pause:.1f} s", flush=True)
    time.sleep(pause)
    cluster.start(victim)
    LOAD.mark_up(victim)
    return 1


def kill_two(cluster: Cluster, rng: random.Random, names: list[str]) -> int:
    victims = rng.sample(names, 2)
    for victim in victims:
        LOAD.mark_down(victim)
        cluster.kill(victim)
    pause = rng.uniform(0.5, 3.0)
    print(f"  kill -9 {' and '.join(victims)} (no quorum), restart after {pause:.1f} s")
    time.sleep(pause)
    for victim in victims:
        cluster.start(victim)
        LOAD.mark_up(victim)
    return 2


def freeze_one(cluster: Cluster, rng: random.Random, names: list[str]) -> None:
    victim = rng.choice(names)
    pause = rng.uniform(1.0, 5.0)
    print(f"  SIGSTOP {victim} for {pause:.1f} s", flush=True)
    harness.freeze(cluster, victim)
    try:
        time.sleep(pause)
    finally:
        harness.thaw(cluster, victim)


def checkpoint(cluster: Cluster, names: list[str], kills: int) -> None:
    before = LOAD.acked_count()
    harness.wait_until(lambda: LOAD.acked_count() > before, 60, f"commits after {kills} kills")
    now = harness.wait_caught_up(cluster, timeout_s=120)
    seq = min(s["seq"] for s in now.values())
    views = " ".join(f"{name}:{s['view']}" for name, s in now.items())
    print(
        f"  after {kills} kills: {LOAD.acked_count()} acknowledged, all nodes at seq >= {seq}; "
        f"views {views}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
