"""The torch device a run asks for, or one sentence saying why it cannot have it."""

from __future__ import annotations

from core.errors import UserError


def resolve_torch_device(device: str):
    """Turn ``cpu`` / ``cuda`` / ``cuda:N`` into a torch.device, or explain why not."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {device!r}: use cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {device} was requested but this PyTorch ({torch.__version__}) "
                "sees no CUDA GPU; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {device} was requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
    return dev
