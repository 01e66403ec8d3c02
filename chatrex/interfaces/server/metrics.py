"""The server's Prometheus metrics (``GET /metrics``), in a registry of their own per app.

    chatrex_requests_total{endpoint, status}        answered requests
    chatrex_request_latency_seconds{endpoint}       time to the last byte (histogram)
    chatrex_queue_depth                             requests waiting for the scheduler
    chatrex_running_requests                        requests in the batch being run
    chatrex_batch_size{stage="upn"|"generate"}      requests per UPN pass / per generate call (histogram)
    chatrex_prompt_tokens_total, chatrex_generated_tokens_total
    chatrex_decode_tokens_per_second                generated tokens / wall time of the last generate call
    chatrex_rejected_total{reason}                  queue_full, timeout, cancelled, bad_request
    chatrex_client_disconnects_total                clients that went away before their answer
    chatrex_gpu_memory_allocated_bytes / _reserved_bytes   torch.cuda on the model's device (0 on CPU)
    process_*                                       resident memory, CPU time, open files of the server

``rate(chatrex_generated_tokens_total[1m])`` is the tokens/s over time.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client import generate_latest

__all__ = ["ServerMetrics", "CONTENT_TYPE_LATEST", "ENDPOINTS"]

#: Endpoint labels; any other path is counted as "other" so that the label set stays small.
ENDPOINTS = ("/v1/chat/completions", "/v1/ground", "/v1/propose", "/v1/models", "/health", "/metrics")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """All metrics of one server; ``render()`` gives the Prometheus text."""

    def __init__(self, device: Optional[torch.device] = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("chatrex_requests", "Answered HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("chatrex_request_latency_seconds", "Time from request to the last byte of the answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("chatrex_queue_depth", "Requests waiting for the scheduler", registry=r)
        self.running = Gauge("chatrex_running_requests", "Requests in the batch being run", registry=r)
        self.batch_size = Histogram("chatrex_batch_size", "Requests per UPN pass / generate call", ["stage"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.prompt_tokens = Counter("chatrex_prompt_tokens", "Prompt tokens read by generate", registry=r)
        self.generated_tokens = Counter("chatrex_generated_tokens", "Tokens generated", registry=r)
        self.decode_tps = Gauge("chatrex_decode_tokens_per_second",
                                "Generated tokens / wall time of the last generate call (all rows)", registry=r)
        self.rejected = Counter("chatrex_rejected", "Requests refused or stopped", ["reason"], registry=r)
        self.disconnects = Counter("chatrex_client_disconnects", "Clients that went away before their answer",
                                   registry=r)
        allocated = Gauge("chatrex_gpu_memory_allocated_bytes", "torch.cuda.memory_allocated on the model's device",
                          registry=r)
        reserved = Gauge("chatrex_gpu_memory_reserved_bytes", "torch.cuda.memory_reserved on the model's device",
                         registry=r)
        allocated.set_function(self._cuda_stat(device, torch.cuda.memory_allocated))
        reserved.set_function(self._cuda_stat(device, torch.cuda.memory_reserved))
        ProcessCollector(registry=r)

    @staticmethod
    def _cuda_stat(device: Optional[torch.device], fn: Callable[[torch.device], int]) -> Callable[[], float]:
        def value() -> float:
            if device is None or device.type != "cuda" or not torch.cuda.is_available():
                return 0.0
            return float(fn(device))
        return value

    @staticmethod
    def endpoint_label(path: str) -> str:
        return path if path in ENDPOINTS else "other"

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        label = self.endpoint_label(path)
        self.requests.labels(endpoint=label, status=str(status)).inc()
        self.latency.labels(endpoint=label).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
