"""P1 — placement decision latency (docs/benchmarks.md, BENCHMARKS.md P1).

12 sites x 1,000 nodes (32-128 CPUs, 128-1024 GB, none or 2-4 GPUs of one of a100, h100,
l40s, t4), each node filled 30-90% through SiteInventory.allocate, then 10,000 random
requests (1-16 CPUs, 1-64 GB, 0-4 GPUs of a type or "any", site auto or named ~20%).
Each rank_sites call is timed with perf_counter_ns. Goal: p99 <= 1 ms.

    .venv/bin/python benchmarks/p1_placement.py [--quick] [--seed N] [--profile]

Prints a table and, last, one JSON line. Nothing here changes spawner/ code.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _hubs import check_fingerprint, code_fingerprint, percentile  # noqa: E402

from fedhub.spawner.inventory import Node, SiteInventory  # noqa: E402
from fedhub.spawner.placement import ANY_GPU, SessionRequest, rank_sites  # noqa: E402

GB = 10**9
GPU_TYPES = ("a100", "h100", "l40s", "t4")
GOAL_P99_US = 1000.0


def build_inventories(rng: random.Random, sites: int, nodes: int) -> list[SiteInventory]:
    """Sites with a realistic mix: each site offers 1-4 of the GPU types on 20-50% of nodes."""
    invs = []
    for s in range(sites):
        inv = SiteInventory(f"site-{s:02d}", kind="slurm")
        offered = rng.sample(GPU_TYPES, rng.randint(1, 4))
        gpu_share = rng.uniform(0.2, 0.5)
        for n in range(nodes):
            cpus = rng.choice((32, 48, 64, 96, 128))
            memory = rng.choice((128, 192, 256, 384, 512, 768, 1024)) * GB
            gpus = {rng.choice(offered): rng.randint(2, 4)} if rng.random() < gpu_share else {}
            inv.add_node(Node(f"n{n:04d}", cpus, memory, gpus))
        invs.append(inv)
    return invs


def fill(rng: random.Random, invs: list[SiteInventory]) -> int:
    """Fill each node to 30-90% with sessions (1-16 CPUs each), GPUs in proportion."""
    sessions = 0
    for inv in invs:
        for node in list(inv.nodes.values()):
            target = rng.uniform(0.30, 0.90)
            gtype, gcount = next(iter(node.gpu_total.items()), ("", 0))
            gpu_target = round(target * gcount)
            while node.cpus_used < target * node.cpus:
                cpus = min(rng.randint(1, 16), target * node.cpus - node.cpus_used)
                cpus = max(1.0, float(int(cpus)))
                memory = int(cpus / node.cpus * node.memory * rng.uniform(0.8, 1.2))
                memory = min(memory, node.free_memory)
                if not node.fits(cpus, memory):
                    break
                gpus = 0
                if gtype and gcount - len(node.gpu_free[gtype]) < gpu_target:
                    gpus = 1
                inv.allocate(node.name, cpus, memory, gtype if gpus else "", gpus)
                sessions += 1
            # any GPUs still owed to the target fill go to small extra sessions
            while gtype and gcount - len(node.gpu_free[gtype]) < gpu_target and node.fits(1, GB):
                inv.allocate(node.name, 1, GB, gtype, 1)
                sessions += 1
    return sessions


def make_requests(rng: random.Random, invs: list[SiteInventory], n: int) -> list[SessionRequest]:
    names = [inv.site for inv in invs]
    out = []
    for _ in range(n):
        gpus = rng.choice((0, 0, 0, 1, 2, 3, 4))  # ~57% CPU-only
        gpu_type = ANY_GPU if rng.random() < 0.25 else rng.choice(GPU_TYPES)
        site = rng.choice(names) if rng.random() < 0.2 else None
        out.append(SessionRequest(cpus=float(rng.randint(1, 16)), memory=rng.randint(1, 64) * GB,
                                  gpus=gpus, gpu_type=gpu_type if gpus else ANY_GPU, site=site))
    return out


def kind_of(req: SessionRequest) -> str:
    where = "named" if req.site else "auto"
    if not req.gpus:
        return f"cpu/{where}"
    return f"gpu-{'any' if req.gpu_type == ANY_GPU else 'typed'}/{where}"


def stats_us(ns: list[int]) -> dict:
    us = sorted(x / 1000 for x in ns)
    return {"n": len(us), "p50_us": round(percentile(us, 50), 1), "p99_us": round(percentile(us, 99), 1),
            "max_us": round(us[-1], 1), "mean_us": round(statistics.fmean(us), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 requests instead of 10,000")
    ap.add_argument("--requests", type=int)
    ap.add_argument("--sites", type=int, default=12)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument("--profile", action="store_true",
                    help="profile the requests with cProfile (also done when p99 misses the goal)")
    args = ap.parse_args(argv)
    n_req = args.requests or (2000 if args.quick else 10000)

    code = code_fingerprint()
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    invs = build_inventories(rng, args.sites, args.nodes)
    sessions = fill(rng, invs)
    build_s = time.perf_counter() - t0
    reqs = make_requests(rng, invs, n_req)

    cpus = sum(n.cpus for inv in invs for n in inv.nodes.values())
    cpus_used = sum(n.cpus_used for inv in invs for n in inv.nodes.values())
    gpus = sum(sum(n.gpu_total.values()) for inv in invs for n in inv.nodes.values())
    gpus_free = sum(sum(len(f) for f in n.gpu_free.values()) for inv in invs for n in inv.nodes.values())

    for r in reqs[:200]:  # warm-up, not counted
        rank_sites(r, invs)
    gc.collect()

    times: list[int] = []
    outcome: list[bool] = []
    placed = refused = 0
    clock = time.perf_counter_ns
    wall0 = time.perf_counter()
    for r in reqs:
        t = clock()
        ranking = rank_sites(r, invs)
        times.append(clock() - t)
        outcome.append(bool(ranking.candidates))
        if ranking.candidates:
            placed += 1
        else:
            refused += 1
    wall = time.perf_counter() - wall0

    overall = stats_us(times)
    overall["decisions_per_s"] = round(len(times) / (sum(times) / 1e9))
    by_kind: dict[str, list[int]] = {}
    for r, t, ok_ in zip(reqs, times, outcome):
        by_kind.setdefault(kind_of(r), []).append(t)
        by_kind.setdefault("placed" if ok_ else "refused", []).append(t)

    print(f"P1 placement: {args.sites} sites x {args.nodes} nodes, {sessions} sessions filling "
          f"{cpus_used / cpus:.0%} of {cpus:,.0f} CPUs, {gpus - gpus_free:,}/{gpus:,} GPUs used; "
          f"built in {build_s:.1f} s; seed {args.seed}")
    print(f"fedhub code {code['sha256']} (newest change {code['newest_change']})")
    print(f"{n_req} requests: {placed} placed, {refused} refused (no site can run them); "
          f"wall {wall:.2f} s")
    print()
    print(f"{'requests':<20}{'n':>7}{'p50 us':>10}{'p99 us':>10}{'max us':>10}{'mean us':>10}")
    rows = [("all", overall)] + [(k, stats_us(v)) for k, v in sorted(by_kind.items())]
    for name, s in rows:
        print(f"{name:<20}{s['n']:>7}{s['p50_us']:>10.1f}{s['p99_us']:>10.1f}{s['max_us']:>10.1f}"
              f"{s['mean_us']:>10.1f}")
    ok = overall["p99_us"] <= GOAL_P99_US
    print()
    print(f"decisions/s (1 / mean latency): {overall['decisions_per_s']:,}")
    print(f"goal p99 <= {GOAL_P99_US:.0f} us: {'MET' if ok else 'NOT MET'} (p99 {overall['p99_us']:.1f} us)")

    profile_top = []
    if args.profile or not ok:
        prof = cProfile.Profile()
        prof.enable()
        for r in reqs:
            rank_sites(r, invs)
        prof.disable()
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf)
        st.sort_stats("tottime").print_stats(8)
        print()
        print("cProfile, all requests again, by own time (tottime):")
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
        for ln in lines[start:start + 9]:
            print("  " + ln)
        for (fn, line, func), (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:5]:
            profile_top.append({"function": f"{Path(fn).name}:{line}({func})", "tottime_s": round(tt, 3),
                                "cumtime_s": round(ct, 3), "calls": nc})
        total = st.total_tt
        print()
        print(f"spawner functions by cumulative time (share of {total:.2f} s profiled):")
        mine = [(k, v) for k, v in st.stats.items() if "/spawner/" in k[0] and k[2] != "<genexpr>"]
        for (fn, line, func), (cc, nc, tt, ct, _) in sorted(mine, key=lambda kv: -kv[1][3])[:8]:
            print(f"  {Path(fn).name}:{line} {func:<28}{nc:>9} calls{ct:>8.2f} s{ct / total:>6.0%}")

    code = check_fingerprint(code)
    result = {"benchmark": "p1_placement", "code": code, "sites": args.sites, "nodes_per_site": args.nodes,
              "requests": n_req, "seed": args.seed, "placed": placed, "refused": refused,
              **overall, "by_kind": {k: s for k, s in rows[1:]}, "goal_p99_us": GOAL_P99_US,
              "goal_met": ok, "profile_top": profile_top}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
