"""Device and precision, decided in one place: CUDA → bf16 autocast + TF32 + fused AdamW; CPU → fp32."""
from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Dense (no 2:4 sparsity) bf16 tensor-core peak FLOP/s per GPU from NVIDIA's datasheets, the MFU denominator.
# Matched in order against torch.cuda.get_device_name(), so the more specific names come first: an H100 PCIe
# (756 TF) or NVL (835 TF) must not be scored against the SXM's 989 TF. Names with no reliable figure map to
# None (no MFU) rather than a guess; LLMRECIPE_PEAK_TFLOPS overrides for any device.
PEAK_FLOPS: list[tuple[str, float | None]] = [
    ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),  # "NVIDIA H100 80GB HBM3" is the SXM
    ("H200 NVL", 835e12), ("H200", 989e12), ("GH200", 989e12),
    ("A100", 312e12),  # SXM and PCIe, 40 and 80 GB alike
    ("A10G", None),  # AWS's variant of the A10, clocked lower; no published bf16 figure
    ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
]


def peak_flops_for(name: str) -> float | None:
    if override := os.environ.get("LLMRECIPE_PEAK_TFLOPS"):
        return float(override) * 1e12
    return next((v for k, v in PEAK_FLOPS if k.lower() in name.lower()), None)


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: torch.nn.Module, parallel: str) -> torch.nn.Module:
        """PyTorch's own engines: DDP (replicas, gradient all-reduce) or FSDP2 (sharded
        params/grads/state)."""
        if not self.distributed:
            return model
        if parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        if parallel == "fsdp":
            from torch.distributed.fsdp import fully_shard

            mp = self.fsdp_policy()
            for block in model.transformer.h:  # one all-gather per block, freed after its forward
                fully_shard(block, mp_policy=mp)
            return fully_shard(model, mp_policy=mp)
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', not {parallel!r}")

    def fsdp_policy(self):
        """FSDP2's mixed precision: bf16 parameters for compute (gathered at half the bytes), gradients
        reduced in fp32 (a bf16 sum over ranks loses low bits), fp32 master weights and optimizer state."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.autocast_dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=self.autocast_dtype, reduce_dtype=torch.float32)

    def mean(self, values: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """Scalars averaged over ranks (what a 1-process run with the same global batch would log), read
        to the host in one transfer: the only host-device sync of a training step, done at logging steps."""
        if not values:
            return {}
        t = torch.stack([torch.as_tensor(v, device=self.device).detach().double().reshape(())
                         for v in values.values()])
        if self.distributed:
            dist.all_reduce(t)
            t = t / self.world_size
        return dict(zip(values, t.tolist()))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @property
    def peak_flops(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return peak_flops_for(torch.cuda.get_device_name(self.device))


def setup(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Pick the device (`auto`: CUDA if present) and the autocast dtype (`auto`: bf16 on CUDA, fp32 on
    CPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device} but this torch ({torch.__version__}) sees no CUDA GPU; "
                         "use device=auto or device=cpu")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # SDPA's cuDNN backend builds a kernel plan per new sequence length (~80 ms each): decoding, where
        # the key length grows every step, ran 11x slower with it (90 vs 8 ms per step at batch 16 on an
        # H100), and SFT/DPO/scoring see a new length per batch. Flash/memory-efficient attention were as
        # fast for fixed-length pre-training (37.0% vs 37.1% MFU, bench/profile_step.py), so cuDNN is off.
        torch.backends.cuda.enable_cudnn_sdp(False)
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype not in ("float32", "bfloat16"):  # fp16 would need loss scaling; bf16 does not
        raise ValueError(f"dtype must be auto, float32 or bfloat16, not {dtype!r}")
    autocast = None if dtype == "float32" else getattr(torch, dtype)
    rt = Runtime(dev, autocast, int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
    if rt.distributed and not dist.is_initialized():
        # NCCL on CUDA, gloo on CPU; a dead peer fails collectives after this timeout at the latest
        timeout = timedelta(seconds=float(os.environ.get("LLMRECIPE_DIST_TIMEOUT", 600)))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
        # Tear the group down before the interpreter does: left to process exit, gloo's worker threads are
        # destroyed while joinable and a rank can die with "terminate called without an active exception"
        # (SIGABRT) after finishing its work (seen once in CI under torchrun eval); PyTorch asks for this
        # call.
        atexit.register(_close_process_group)
    return rt


def _close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
