"""Which models are loaded, for how long, and who waits for them.

A model loads on first use and stays loaded for its keep-alive after the last
request ends (0 unloads it at once, a negative value keeps it forever). At
most `engine_max_loaded_models` stay loaded; loading one more unloads the
least recently used idle model first, and waits when none is idle.

Each loaded model decodes `engine_num_parallel` jobs at once. Up to
`engine_max_queue` more wait for a slot; past that a request fails at once
with 503 and Retry-After instead of hanging. A request that is cancelled,
because its client went away, leaves the queue or frees its slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from llmcloud.engine.embeddings import Embedder
from llmcloud.engine.errors import EngineError, ServerBusy
from llmcloud.engine.prompt import ChatTemplate
from llmcloud.engine.runtime import ModelRunner
from llmcloud.engine.store import ModelEntry, ModelStore
from llmcloud.monitoring.llm_metrics import record_model_load, record_queue_rejection, record_slots
from llmcloud.settings import Settings

logger = logging.getLogger("llmcloud.engine")

FOREVER = float("inf")


@dataclass(eq=False)
class LoadedModel:
    entry: ModelEntry
    runner: ModelRunner
    template: ChatTemplate
    num_ctx: int
    load_duration_ns: int
    keep_alive: float
    expires_at: float = FOREVER
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    embedder: Embedder | None = None

    @property
    def name(self) -> str:
        return self.entry.name.display

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    def expires_wall_time(self) -> float | None:
        """Expiry as a Unix time, or None when the model stays loaded."""
        if self.expires_at == FOREVER:
            return None
        if not self.idle:
            return time.time() + (self.keep_alive if self.keep_alive >= 0 else 0)
        return time.time() + max(0.0, self.expires_at - time.monotonic())


class Scheduler:
    def __init__(self, settings: Settings, store: ModelStore) -> None:
        self.settings = settings
        self.store = store
        self._loaded: dict[str, LoadedModel] = {}
        self._changed = asyncio.Condition()
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep_expired(), name="keep-alive-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for name in list(self._loaded):
            await self.unload(name)

    def running(self) -> list[LoadedModel]:
        return sorted(self._loaded.values(), key=lambda model: -model.last_used)

    def find(self, name: str) -> LoadedModel | None:
        return self._loaded.get(name)

    async def acquire(
        self, entry: ModelEntry, *, num_ctx: int, keep_alive: float | None
    ) -> tuple[LoadedModel, int]:
        """Reserve a place with a loaded model, loading it first when needed.

        Returns the model and the load time in nanoseconds (0 when it was
        loaded already). The caller must call `release` once it is done.
        """
        name = entry.name.display
        started = time.perf_counter_ns()
        async with self._changed:
            while True:
                model = self._loaded.get(name)
                if model is not None and model.entry.digest != entry.digest:
                    await self._wait_idle_and_unload(model)
                    continue
                if model is not None and model.num_ctx < num_ctx:
                    await self._wait_idle_and_unload(model)
                    continue
                if model is not None:
                    self._check_queue(model)
                    model.in_flight += 1
                    _report_slots(model)
                    model.last_used = time.monotonic()
                    # As in Ollama, a request without keep_alive gets the default again
                    # rather than whatever the previous request asked for.
                    model.keep_alive = (
                        self.settings.keep_alive_seconds if keep_alive is None else keep_alive
                    )
                    return model, 0
                await self._make_room()
                model = await self._load(entry, num_ctx, keep_alive)
                model.in_flight += 1
                _report_slots(model)
                return model, time.perf_counter_ns() - started

    async def release(self, model: LoadedModel) -> None:
        async with self._changed:
            model.in_flight -= 1
            model.last_used = time.monotonic()
            _report_slots(model)
            if model.in_flight == 0:
                keep = model.keep_alive
                model.expires_at = FOREVER if keep < 0 else time.monotonic() + keep
                if keep == 0:
                    self._unload_now(model)
            self._changed.notify_all()

    async def embedder(self, model: LoadedModel) -> Embedder:
        if model.embedder is None:
            model.embedder = await asyncio.to_thread(
                Embedder,
                model.entry.model_path,
                num_ctx=model.num_ctx,
                threads=self.settings.engine_threads,
                gpu_layers=self.settings.engine_gpu_layers,
            )
        return model.embedder

    async def unload(self, name: str) -> bool:
        """Unload a model when it is idle, waiting for running requests to end."""
        async with self._changed:
            model = self._loaded.get(name)
            if model is None:
                return False
            await self._wait_idle_and_unload(model)
            return True

    def _check_queue(self, model: LoadedModel) -> None:
        capacity = model.runner.slots + self.settings.engine_max_queue
        if model.in_flight >= capacity:
            record_queue_rejection("engine", model.name)
            raise ServerBusy(
                f"model '{model.name}' is busy: {model.runner.slots} requests running and "
                f"{self.settings.engine_max_queue} waiting; retry later",
                retry_after=2,
            )

    async def _wait_idle_and_unload(self, model: LoadedModel) -> None:
        await self._changed.wait_for(lambda: model.idle or model.name not in self._loaded)
        if self._loaded.get(model.name) is model:
            self._unload_now(model)

    async def _make_room(self) -> None:
        while len(self._loaded) >= self.settings.engine_max_loaded_models:
            idle = [model for model in self._loaded.values() if model.idle]
            if idle:
                self._unload_now(min(idle, key=lambda model: model.last_used))
            else:
                await self._changed.wait()

    async def _load(self, entry: ModelEntry, num_ctx: int, keep_alive: float | None) -> LoadedModel:
        name = entry.name.display
        logger.info("loading model %s (%s tokens per slot)", name, num_ctx)
        started = time.perf_counter_ns()
        try:
            runner = await asyncio.to_thread(
                ModelRunner,
                entry.model_path,
                slots=self.settings.engine_num_parallel,
                slot_ctx=num_ctx,
                threads=self.settings.engine_threads,
                gpu_layers=self.settings.engine_gpu_layers,
            )
        except (ValueError, OSError) as exc:
            record_model_load(name, None)
            raise EngineError(f"loading model '{name}' failed: {exc}") from None
        template = ChatTemplate(
            runner.metadata.get("tokenizer.chat_template"),
            bos_token=_special_token(runner, "tokenizer.ggml.bos_token_id"),
            eos_token=_special_token(runner, "tokenizer.ggml.eos_token_id"),
        )
        duration = time.perf_counter_ns() - started
        model = LoadedModel(
            entry=entry,
            runner=runner,
            template=template,
            num_ctx=num_ctx,
            load_duration_ns=duration,
            keep_alive=self.settings.keep_alive_seconds if keep_alive is None else keep_alive,
        )
        self._loaded[name] = model
        record_model_load(name, duration / 1e9)
        logger.info("model %s loaded in %.2f s", name, duration / 1e9)
        return model

    def _unload_now(self, model: LoadedModel) -> None:
        self._loaded.pop(model.name, None)
        model.runner.close()
        if model.embedder is not None:
            model.embedder.close()
        logger.info("model %s unloaded", model.name)
        self._changed.notify_all()

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            async with self._changed:
                now = time.monotonic()
                for model in list(self._loaded.values()):
                    if model.idle and model.expires_at <= now:
                        self._unload_now(model)


def _report_slots(model: LoadedModel) -> None:
    record_slots("engine", model.name, model.in_flight, model.runner.slots)


def _special_token(runner: ModelRunner, key: str) -> str:
    token_id = runner.metadata.get(key)
    if token_id is None or not token_id.isdigit():
        return ""
    return runner.token_text(int(token_id))
