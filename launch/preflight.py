"""Preflight of a multi-node link: a bounded all-reduce that reports bus bandwidth, before any model loads.

Run it with torchrun on every node (``python -m launch --preflight`` does that with the cluster's environment).
Bus bandwidth follows nccl-tests' definition for all-reduce: ``algbw * 2 * (n - 1) / n`` with
``algbw = bytes / time``, so it is comparable with the link's rate (the Spark pair's ConnectX-7: 200 Gb/s,
about 24 GB/s with both RDMA devices in NCCL_IB_HCA, about 3 GB/s without).

Examples:
    torchrun --nnodes=2 --node_rank=0 --nproc-per-node=1 --master_addr=192.168.100.10 --master_port=29500 \\
        -m launch.preflight --size-mb 256 --min-busbw-gbs 15
    torchrun --nnodes=1 --nproc-per-node=2 -m launch.preflight --backend gloo --size-mb 4   # CPU, this machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta


def bus_bandwidth(nbytes: int, seconds: float, world: int) -> float:
    """nccl-tests' all-reduce bus bandwidth in bytes per second."""
    return nbytes / seconds * 2 * (world - 1) / world if world > 1 else nbytes / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default=None, help="nccl (default with CUDA) | gloo (default without)")
    parser.add_argument(
        "--size-mb", type=float, default=256.0, help="all-reduce message size, MB (1e6 bytes)"
    )
    parser.add_argument("--iters", type=int, default=10, help="timed all-reduces after 2 warm-ups")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="give up on a collective after this")
    parser.add_argument(
        "--min-busbw-gbs", type=float, default=0.0, help="fail below this bus bandwidth, GB/s"
    )
    parser.add_argument("--json", default=None, help="also write the result (rank 0) to this file")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    n = max(1, int(args.size_mb * 1e6) // 4)
    x = torch.ones(n, dtype=torch.float32, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        dist.all_reduce(x)
    sync()
    x.fill_(1.0)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        dist.all_reduce(x)
    sync()
    seconds = (time.perf_counter() - t0) / args.iters
    # After the timed all-reduces of ones every element is world ** iters: the link moved the right bytes.
    expected = float(world) ** args.iters
    correct = bool(torch.allclose(x[:16].cpu(), torch.full((16,), expected), rtol=1e-5))
    busbw = bus_bandwidth(n * 4, seconds, world)
    result = {
        "backend": backend,
        "world_size": world,
        "bytes": n * 4,
        "seconds_per_allreduce": seconds,
        "busbw_gbs": busbw / 1e9,
        "correct": correct,
        "env": {
            k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "GLOO_")) or k == "MASTER_ADDR"
        },
    }
    ok = correct and result["busbw_gbs"] >= args.min_busbw_gbs
    if rank == 0:
        print(
            f"preflight: all-reduce of {n * 4 / 1e6:.1f} MB over {world} ranks ({backend}): "
            f"{seconds * 1e3:.2f} ms, bus bandwidth {result['busbw_gbs']:.2f} GB/s, "
            f"{'correct' if correct else 'WRONG RESULT'}",
            flush=True,
        )
        print(json.dumps(result), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        if correct and not ok:
            print(
                f"preflight: {result['busbw_gbs']:.2f} GB/s is below --min-busbw-gbs {args.min_busbw_gbs}; "
                "on the Spark pair list BOTH RDMA devices of the link (cluster.nccl.ib_hca=[dev0,dev1], see "
                "ibdev2netdev) and check NCCL_SOCKET_IFNAME (cluster.nccl.socket_ifname=...)",
                file=sys.stderr,
            )
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
