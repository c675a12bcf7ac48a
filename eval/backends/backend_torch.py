"""The converted PyTorch module as a backend, on ``cpu`` or ``cuda[:N]``: its device
normalisation is checked bit for bit against ``preprocess.recipes.normalize`` on CUDA."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import sha256_file
from core.profiles import CROP_SIZE, VGG_MEANS_RGB, ModelProfile
from core.system import available_cores
from eval.backends.base import Backend, check_logits_shape
from eval.backends.devices import resolve_torch_device
from eval.metrics import TOP_K
from preprocess.recipes import normalize

log = logging.getLogger(__name__)


# CUDA batches whose top-5 labels are fetched in one transfer: each fetch synchronises the
# device, so fetching per batch would leave the GPU idle between batches.
CUDA_COLLECT_EVERY = 16
# Cache reader threads on CUDA, at most (and no more than the cores): a GPU outruns one
# thread reading and sha256-checking crops, so several read ahead at once.
CUDA_READER_THREADS = 8


class TorchBackend(Backend):
    """A converted PyTorch module on ``cpu`` or ``cuda[:N]``."""

    name = "torch"
    engine = "eager"

    def __init__(
        self,
        module,
        profile: ModelProfile,
        device: str = "cpu",
        weights_path=None,
        *,
        engine: str = "eager",
        batch_size: int = 32,
        num_images: int | None = None,
        verify_images: np.ndarray | None = None,
        label_offset: int | None = None,
        precision: str = "fp32",
        weights_sha256: str | None = None,
    ):
        import torch

        super().__init__(profile, device)
        self.module = module  # the eager module (a fast engine runs a folded copy of it)
        if label_offset is not None:  # the checkpoint's own record (num_classes - 1000)
            self._label_offset = label_offset
        self._torch = torch
        self.torch_device = resolve_torch_device(device)
        self._name_weights(weights_path, weights_sha256)
        self._pinned: list = []  # keeps the pinned tensors behind allocate_batch alive
        self._make_normalization_constants()
        if self.torch_device.type != "cpu":
            self.check_normalization()
        self.precision = precision
        self._start_engine(module, engine, batch_size, num_images, verify_images)
        self._set_up_batch_pipeline()

    def _name_weights(self, weights_path, weights_sha256: str | None) -> None:
        """Set ``weights_path`` and ``weights_sha256``, the weights' name in the records."""
        self.weights_path = Path(weights_path) if weights_path is not None else None
        # What results.json and the resume journal name the weights by: the digest of the
        # bytes loaded when the caller has it, else the file's now, before any image runs (a
        # file replaced during the run must not be named as the one that predicted).
        if weights_sha256 is None and self.weights_path is not None:
            weights_sha256 = sha256_file(self.weights_path)
        self.weights_sha256 = weights_sha256

    def _make_normalization_constants(self) -> None:
        """The constants ``normalize`` uses, as float32 tensors on the model's device."""
        torch = self._torch
        # Normalisation constants live on the device as float32 tensors, like the float32
        # numpy operands of the CPU recipe. Dividing by a device tensor (not a Python
        # scalar) matters on CUDA: a CPU-scalar divisor is turned into a multiply by its
        # reciprocal there, which rounds differently from a true division.
        as_f32 = {"dtype": torch.float32, "device": self.torch_device}
        self._vgg_means = torch.tensor(VGG_MEANS_RGB, **as_f32)
        self._f255, self._f0_5, self._f2 = (torch.tensor(v, **as_f32) for v in (255.0, 0.5, 2.0))

    def _start_engine(self, module, engine, batch_size, num_images, verify_images):
        """Set ``prepared`` and ``engine``: the module ready to run, eager or fast."""
        # A module that already runs its own int8 kernels has nothing for a fast builder to
        # freeze or compile (they fail on its packed weights): it runs eager.
        kernels = (getattr(module, "quantization_record", None) or {}).get("kernels", "")
        if kernels.startswith("int8"):
            engine = "eager"
        # prepare_engine sets TF32 per precision on CUDA and takes the module over.
        self.prepared = self._prepare(module, engine, batch_size, num_images, verify_images)
        if kernels.startswith("int8"):
            note = f"{kernels}: eager, as fast engines freeze or compile fp32 models"
            self.prepared.notes.insert(0, note)
        self.engine = self.prepared.name

    def _set_up_batch_pipeline(self) -> None:
        """How batches flow: copy stream, labels fetched per group, reader threads."""
        # On CUDA: a side stream copies the next batch in while the current one computes,
        # and top-5 labels stay on the device until a group of batches is fetched at once.
        on_cuda = self.torch_device.type == "cuda"
        self._copy_stream = self._torch.cuda.Stream(self.torch_device) if on_cuda else None
        self.collect_every = CUDA_COLLECT_EVERY if on_cuda else 1
        # On the CPU the model needs every core; a GPU run is bound by reading and checking
        # crops (a sha256 per crop), so it reads on several threads.
        self.reader_threads = min(CUDA_READER_THREADS, available_cores()) if on_cuda else 1

    def _prepare(self, module, engine, batch_size, num_images, verify_images):
        """Eager or fast (frozen/compiled) execution, checked against eager on real crops."""
        from eval.engines import prepare_engine

        sample = None
        if verify_images is not None and len(verify_images):
            u8 = self._torch.from_numpy(np.array(verify_images)).to(self.torch_device)
            with self._torch.inference_mode():
                sample = self.normalize(u8).permute(0, 3, 1, 2).contiguous()
        return prepare_engine(
            module,
            engine,
            device=self.torch_device,
            batch_size=batch_size,
            num_images=num_images,
            verify_sample=sample,
            copy_module=False,
            model_name=self.profile.name,
            precision=self.precision,
        )

    def normalize(self, u8_nhwc):
        """Float32 normalisation of a uint8 NHWC tensor on its own device (recipe order)."""
        x = u8_nhwc.to(self._torch.float32)
        if self.profile.recipe == "vgg":
            return x - self._vgg_means
        if self.profile.recipe == "mobilenet":
            x = x / self._f255
            x = x - self._f0_5
            return x * self._f2
        raise ValueError(f"unknown preprocessing recipe {self.profile.recipe!r}")

    def _normalize_nchw(self, u8_nchw):
        """``normalize`` of an NCHW view of NHWC crops, as the same NCHW view."""
        return self.normalize(u8_nchw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def check_normalization(self) -> None:
        """Fail unless the device normalisation equals the CPU recipe for all 256 values."""
        values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
        expected = normalize(values, self.profile)
        got = self.normalize(self._torch.from_numpy(values).to(self.torch_device)).cpu().numpy()
        if not np.array_equal(got.view(np.uint32), expected.view(np.uint32)):
            raise UserError(
                f"float32 normalisation on {self.torch_device} does not match the CPU recipe "
                "bit for bit; evaluate with --device cpu"
            )

    def allocate_batch(self, batch_size: int) -> np.ndarray:
        if self.torch_device.type != "cuda":
            return super().allocate_batch(batch_size)
        shape = (batch_size, CROP_SIZE, CROP_SIZE, 3)
        pinned = self._torch.empty(shape, dtype=self._torch.uint8, pin_memory=True)
        self._pinned.append(pinned)
        return pinned.numpy()

    def logits(self, u8_nhwc: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._forward(u8_nhwc).float().cpu().numpy()

    def submit(self, u8_nhwc: np.ndarray):
        """Queue one batch; returns its top-5 labels as a device tensor (not yet fetched)."""
        torch = self._torch
        with torch.inference_mode():
            logits = self._forward(u8_nhwc)
            # A stable descending sort ranks ties to the lower class, as top_k_classes does.
            order = torch.sort(logits.float(), dim=1, descending=True, stable=True).indices
            return order[:, :TOP_K] - self.label_offset

    def _forward(self, u8_nhwc: np.ndarray):
        """The device logits of one uint8 NHWC batch, shape-checked; call inside
        ``inference_mode``. The host buffer may be refilled once this returns."""
        if not u8_nhwc.flags.writeable:  # a read-only memmap slice: torch wants writable
            u8_nhwc = np.array(u8_nhwc)
        u8 = self._to_device(self._torch.from_numpy(u8_nhwc))
        # NHWC -> NCHW is a free view (channels-last strides), no copy; each chunk is
        # normalised where it runs (on the CPU: by the worker that runs it).
        logits = self.prepared(u8.permute(0, 3, 1, 2), transform=self._normalize_nchw)
        check_logits_shape(logits, len(u8_nhwc), 1000 + self.label_offset, "the PyTorch model")
        return logits

    def _to_device(self, u8_host):
        """Host batch -> device; on CUDA through the copy stream, returning once copied."""
        if self._copy_stream is None:
            return u8_host.to(self.torch_device)
        torch = self._torch
        with torch.cuda.stream(self._copy_stream):
            u8 = u8_host.to(self.torch_device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        compute = torch.cuda.current_stream(self.torch_device)
        compute.wait_event(copied)
        u8.record_stream(compute)  # its memory is not reused before compute is done
        copied.synchronize()  # the (pinned) host buffer may be refilled now
        return u8

    def collect(self, handles: list) -> list[np.ndarray]:
        """One device-to-host transfer (one synchronisation) for a group of batches."""
        if not handles:
            return []
        torch = self._torch
        joined = torch.cat(handles).to(torch.int64).cpu().numpy()
        return np.split(joined, np.cumsum([len(h) for h in handles])[:-1])

    def describe(self) -> dict:
        cuda, device = self._torch.cuda, self.torch_device
        info = {
            "precision": self.precision,
            "device_name": "cpu" if self._copy_stream is None else cuda.get_device_name(device),
            "setup_seconds": round(self.prepared.setup_seconds, 2),
            "engine_notes": list(self.prepared.notes),
        }
        if self.weights_path is not None:
            info["weights"] = os.fspath(self.weights_path)
            info["weights_sha256"] = self.weights_sha256
        return info
