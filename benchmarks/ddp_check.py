"""DDP check (2+ GPUs, NCCL, one process per GPU):
torchrun --nproc_per_node=2 benchmarks/ddp_check.py

Both ranks train a small MLP with seeddrop.Dropout under DistributedDataParallel; each rank
seeds torch with its own seed, so the dropout masks differ across ranks; the run is done
twice and must give identical losses (reproducible), and the ranks' parameters stay equal.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import seeddrop


def train(rank, world, steps=20):
    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), seeddrop.Dropout(0.5), nn.Linear(1024, 10)).cuda()
    ddp = DDP(model, device_ids=[rank])
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    torch.manual_seed(1000 + rank)  # per-rank dropout seeds and data
    x = torch.randn(256, 512, device="cuda")  # a fixed per-rank batch: the loss must fall
    y = torch.randint(0, 10, (256,), device="cuda")
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    probe = seeddrop.Dropout(0.5)(torch.ones(4096, device="cuda")) != 0
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return losses, probe, flat


def main():
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(rank)
    losses1, probe, params = train(rank, world)
    losses2, probe2, _ = train(rank, world)
    probes = [torch.empty_like(probe) for _ in range(world)]
    dist.all_gather(probes, probe)
    params_all = [torch.empty_like(params) for _ in range(world)]
    dist.all_gather(params_all, params)
    checks = {
        "losses_reproducible": losses1 == losses2,
        "probe_reproducible": bool(torch.equal(probe, probe2)),
        "masks_differ_across_ranks": all(not torch.equal(probes[0], p) for p in probes[1:]),
        "params_equal_across_ranks": all(torch.equal(params_all[0], p) for p in params_all[1:]),
        "loss_decreased": losses1[-1] < losses1[0],
    }
    print(f"rank {rank}/{world} {torch.cuda.get_device_name()}: first loss {losses1[0]:.4f}, "
          f"last {losses1[-1]:.4f}; {checks}", flush=True)
    dist.barrier()
    dist.destroy_process_group()
    if not all(checks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
