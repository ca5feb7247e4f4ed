"""A fake NVML behind the real pynvml module, for machines without an NVIDIA GPU.

It replaces the pynvml functions that llmcloud.monitoring.gpus calls and follows
their behaviour in nvidia-ml-py 13 (pynvml.py). Calls before nvmlInit raise
NVML_ERROR_UNINITIALIZED. nvmlInit raises NVML_ERROR_LIBRARY_NOT_FOUND where
libnvidia-ml.so.1 is missing, and NVML_ERROR_DRIVER_NOT_LOADED where the kernel
driver is not loaded. An index past the count raises NVML_ERROR_INVALID_ARGUMENT.
nvmlDeviceGetName returns str, and readings are the real ctypes structures:
c_nvmlUtilization_t in percent, c_nvmlMemory_t in bytes. Errors are the real
pynvml.NVMLError, which maps each code to its subclass.
"""

from __future__ import annotations

from dataclasses import dataclass

import pynvml
import pytest


@dataclass
class FakeGpu:
    name: str
    utilization_percent: int
    memory_total: int
    memory_used: int
    utilization_error: int | None = None
    """NVML error code that nvmlDeviceGetUtilizationRates raises, if any."""
    memory_error: int | None = None
    """NVML error code that nvmlDeviceGetMemoryInfo raises, if any."""


@dataclass(frozen=True)
class FakeHandle:
    """Stands in for the c_nvmlDevice_t pointer that NVML returns."""

    index: int


class FakeNvml:
    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.init_count = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
        for name in (
            "nvmlInit",
            "nvmlShutdown",
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetName",
            "nvmlDeviceGetUtilizationRates",
            "nvmlDeviceGetMemoryInfo",
        ):
            monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._check_initialized()
        self.init_count -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._check_initialized()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._check_initialized()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> pynvml.c_nvmlUtilization_t:
        gpu = self._gpu(handle)
        if gpu.utilization_error is not None:
            raise pynvml.NVMLError(gpu.utilization_error)
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilization_percent, memory=0)

    def nvmlDeviceGetMemoryInfo(
        self, handle: FakeHandle, version: int | None = None
    ) -> pynvml.c_nvmlMemory_t:
        gpu = self._gpu(handle)
        if gpu.memory_error is not None:
            raise pynvml.NVMLError(gpu.memory_error)
        free = gpu.memory_total - gpu.memory_used
        return pynvml.c_nvmlMemory_t(total=gpu.memory_total, free=free, used=gpu.memory_used)

    def _gpu(self, handle: FakeHandle) -> FakeGpu:
        self._check_initialized()
        if not isinstance(handle, FakeHandle) or handle.index >= len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[handle.index]

    def _check_initialized(self) -> None:
        if self.init_count == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
