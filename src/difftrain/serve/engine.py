"""Dynamic micro-batching: compatible requests that arrive within a short window share one
forward pass. Image i of a request still depends only on (seed, first_index + i).

One generation thread runs the model (torch calls never overlap); the event loop only plans,
queues and answers. The queue is bounded: a full queue refuses at once (429), and a client
that goes away before its batch starts gives its place back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from difftrain.pipeline.request import (
    GenerationRequest,
    ImageBatch,
    Limits,
    Plan,
    plan_request,
    run_merged,
    run_request,
)
from difftrain.serve.metrics import Metrics
from difftrain.serve.models import ModelHolder, Served


class QueueFull(Exception):
    """The bounded queue is full; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"queue full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Result:
    images: torch.Tensor  # uint8 N×C×H×W
    indices: list[int]
    labels: list[int] | None
    model: str
    plan: Plan


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    plan: Plan
    served: Served  # the model `plan` was checked against
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Engine:
    """Queue + batcher. `submit` checks and enqueues; `wait` answers or frees the slot."""

    def __init__(
        self,
        holder: ModelHolder,
        metrics: Metrics,
        limits: Limits,
        *,
        max_queue: int = 32,
        window_s: float = 0.02,
        max_batch: int = 32,
        batching: bool = True,
    ):
        self.holder, self.metrics, self.limits = holder, metrics, limits
        self.max_queue, self.window_s, self.max_batch = max_queue, window_s, max_batch
        self.batching = batching
        self.pending: deque[Job] = deque()
        self.slots = 0  # jobs reserved, queued or running: the bounded queue depth
        self.forward_batches = 0
        self.avg_batch_s = 1.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="difftrain-generate")

    # ---- lifecycle ----

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- the request side ----

    def _release(self) -> None:
        self.slots -= 1
        self.metrics.queue_depth.set(self.slots)

    async def submit(self, req: GenerationRequest) -> Job:
        """Reserve a slot (QueueFull when none), check the request (ConfigError), enqueue."""
        if self.slots >= self.max_queue:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise QueueFull(max(1, math.ceil(self.avg_batch_s * self.slots / self.max_queue)))
        self.slots += 1  # no await between the check and this: slots never exceed max_queue
        self.metrics.queue_depth.set(self.slots)
        try:
            served = self.holder.current
            # Planning decodes init images: off the event loop, beside the generation thread.
            plan = await asyncio.to_thread(plan_request, served.run, req, self.limits)
        except BaseException:
            self._release()
            raise
        job = Job(req, plan, served, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self._wake.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: a job not yet started leaves the queue and frees its slot."""
        if job in self.pending:
            self.pending.remove(job)
            self._release()
        if not job.future.done():
            job.future.cancel()

    # ---- the batching side ----

    def _replan(self, served: Served) -> None:
        """After a model swap, check queued requests against the new model."""
        for job in list(self.pending):
            if job.served is served:
                continue
            try:
                job.plan, job.served = plan_request(served.run, job.request, self.limits), served
            except Exception as err:  # ConfigError (model changed) or anything else: this job only
                self.pending.remove(job)
                self._release()
                if not job.future.done():
                    job.future.set_exception(err)

    def _take_group(self) -> list[Job]:
        """The oldest job and, with batching on, every queued job it can share a pass with."""
        first = self.pending.popleft()
        group, images, key = [first], first.plan.num, first.plan.batch_key()
        if self.batching and key is not None:
            for job in list(self.pending):
                if job.plan.batch_key() == key and images + job.plan.num <= self.max_batch:
                    self.pending.remove(job)
                    group.append(job)
                    images += job.plan.num
        return group

    def _generate(self, served: Served, plans: list[Plan]) -> list[ImageBatch]:
        """Runs in the generation thread: one forward batch for the whole group."""
        if len(plans) == 1:
            parts = list(run_request(served.run, plans[0], batch_size=self.max_batch))
            return [
                ImageBatch(
                    torch.cat([b.images for b in parts]),
                    0,
                    parts[0].seed,
                    [i for b in parts for i in b.indices],
                    None if parts[0].labels is None else [v for b in parts for v in b.labels],
                )
            ]
        return run_merged(served.run, plans)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                if self.batching and self.window_s > 0:
                    # Wait out the window after the oldest request: companions may arrive.
                    delay = self.pending[0].queued_at + self.window_s - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if not self.pending:
                        break
                served = self.holder.current
                self._replan(served)
                if not self.pending:
                    break
                group = self._take_group()
                t0 = time.perf_counter()
                try:
                    batches = await loop.run_in_executor(
                        self._executor, self._generate, served, [j.plan for j in group]
                    )
                except Exception as err:  # answered as a 500 for this group only
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(err)
                else:
                    self._record(time.perf_counter() - t0, group)
                    for job, b in zip(group, batches, strict=True):
                        if not job.future.done():
                            job.future.set_result(
                                Result(b.images, b.indices, b.labels, served.name, job.plan)
                            )
                finally:
                    for _ in group:
                        self._release()

    def _record(self, seconds: float, group: list[Job]) -> None:
        self.forward_batches += 1
        self.avg_batch_s = 0.8 * self.avg_batch_s + 0.2 * seconds
        self.metrics.batches.inc()
        self.metrics.batch_requests.observe(len(group))
        self.metrics.images.inc(sum(j.plan.num for j in group))
