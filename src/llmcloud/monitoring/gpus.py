"""GPU utilisation and memory through NVML (the nvidia-ml-py package, module pynvml).

A machine without the NVIDIA driver has no GPU series and logs nothing above
DEBUG. NVML reports a missing library as NVML_ERROR_LIBRARY_NOT_FOUND and a
missing kernel driver as NVML_ERROR_DRIVER_NOT_LOADED. A GPU that fails a
reading during a scrape (NVML_ERROR_GPU_IS_LOST, or NVML_ERROR_NOT_SUPPORTED for
utilisation on some GPUs) is left out of that metric. Such a failure is logged
once, and again only after the reading has worked in between.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

logger = logging.getLogger("llmcloud.monitoring")

Samples = Mapping[tuple[str, ...], float]


class GpuReader:
    """Reads every GPU's utilisation and memory at scrape time, labelled by GPU index."""

    def __init__(self, nvml: ModuleType, handles: list[Any]) -> None:
        self.nvml = nvml
        self.handles = handles
        self._failing: set[tuple[str, int]] = set()

    def utilization(self) -> Samples:
        return self._read(
            "utilization", lambda handle: self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
        )

    def memory_used(self) -> Samples:
        return self._read("memory", lambda handle: self.nvml.nvmlDeviceGetMemoryInfo(handle).used)

    def memory_total(self) -> Samples:
        return self._read("memory", lambda handle: self.nvml.nvmlDeviceGetMemoryInfo(handle).total)

    def _read(self, reading: str, field: Callable[[Any], float]) -> Samples:
        samples: dict[tuple[str, ...], float] = {}
        for index, handle in enumerate(self.handles):
            try:
                samples[(str(index),)] = float(field(handle))
            except self.nvml.NVMLError as exc:
                if (reading, index) not in self._failing:
                    logger.warning(
                        "reading %s of GPU %d through NVML failed, so it is left out of "
                        "the metrics until it works again: %s",
                        reading,
                        index,
                        exc,
                    )
                    self._failing.add((reading, index))
                continue
            if (reading, index) in self._failing:
                logger.info("reading %s of GPU %d through NVML works again", reading, index)
                self._failing.discard((reading, index))
        return samples


def open_gpus() -> GpuReader | None:
    """Initialise NVML and return a reader of every GPU, or None where there is none."""
    try:
        import pynvml
    except ImportError:
        logger.debug("no GPU metrics, because nvidia-ml-py is not installed")
        return None
    try:
        pynvml.nvmlInit()
        count = int(pynvml.nvmlDeviceGetCount())
        handles = [pynvml.nvmlDeviceGetHandleByIndex(index) for index in range(count)]
        names = [str(pynvml.nvmlDeviceGetName(handle)) for handle in handles]
    except pynvml.NVMLError as exc:
        no_driver = (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        level = logging.DEBUG if exc.value in no_driver else logging.WARNING
        logger.log(level, "no GPU metrics, because NVML failed: %s", exc)
        return None
    if not handles:
        logger.debug("no GPU metrics, because NVML finds no GPU")
        return None
    described = ", ".join(f"{index}: {name}" for index, name in enumerate(names))
    logger.info("GPU metrics on for %d GPUs (%s)", len(handles), described)
    return GpuReader(pynvml, handles)
