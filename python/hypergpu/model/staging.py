"""A model's flat parameters between its device and the host, at round boundaries.

Used where a node's parameters leave or enter an accelerator once per round
(:class:`~hypergpu.node.optimizer.DistributedOptimizer`): one pinned host
buffer, one transfer per direction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hypergpu.model.layout import ParamLayout

__all__ = ["HostStaging", "model_device"]


class HostStaging:
    """The model's flat parameters between its device and the host, at round boundaries.

    One float32 host buffer of ``layout.total`` values, allocated once. For
    a model on a CUDA device it is page-locked (pinned): the device copies
    straight into and out of it, rather than through the driver's pageable
    bounce buffer, and the host-to-device copy runs asynchronously. The
    parameters are gathered into one flat tensor on the device first, so
    each direction is a single transfer instead of one per tensor.

    Elsewhere (a CPU model, or no CUDA) the buffer is ordinary memory and
    the copies are plain; a CPU model is flattened straight into it.
    """

    def __init__(self, layout: ParamLayout, device: torch.device):
        self.layout = layout
        self.device = device
        self.pinned = device.type == "cuda" and torch.cuda.is_available()
        self.host = torch.empty(layout.total, dtype=torch.float32, pin_memory=self.pinned)
        # Set after an asynchronous upload: the buffer must not be rewritten before the copy read it.
        self._uploaded: torch.cuda.Event | None = None

    def gather(self, model: nn.Module) -> np.ndarray:
        """The model's flat parameters, in the host buffer: a view, valid until the next call."""
        self._wait_for_upload()
        state = model.state_dict()
        parts = [state[s.name].detach().reshape(-1) for s in self.layout.specs]
        if not parts:
            return self.host.numpy()
        with torch.no_grad():
            if self.device.type == "cpu":
                torch.cat([p.to(torch.float32) for p in parts], out=self.host)
            else:
                flat = torch.cat([p.to(self.device, torch.float32) for p in parts])
                self.host.copy_(flat)  # blocking: the caller reads the buffer next
        return self.host.numpy()

    def scatter(self, model: nn.Module, flat: np.ndarray) -> None:
        """Load ``flat`` (checked against the layout) into the model's tensors."""
        self.layout.check(flat)
        if self.device.type == "cpu":
            source = torch.from_numpy(np.ascontiguousarray(flat))
        else:
            self._wait_for_upload()
            np.copyto(self.host.numpy(), flat)
            source = self.host.to(self.device, non_blocking=self.pinned)
        state = model.state_dict()
        with torch.no_grad():
            for s in self.layout.specs:
                state[s.name].copy_(source[s.offset : s.offset + s.numel].view(s.shape))
        if self.pinned:
            self._uploaded = torch.cuda.Event()
            self._uploaded.record(torch.cuda.current_stream(self.device))

    def _wait_for_upload(self) -> None:
        if self._uploaded is not None:
            self._uploaded.synchronize()
            self._uploaded = None


def model_device(model: nn.Module, layout: ParamLayout) -> torch.device:
    """Where the model's flat entries live (those of its first one)."""
    if not layout.specs:
        return torch.device("cpu")
    return model.state_dict()[layout.specs[0].name].device
