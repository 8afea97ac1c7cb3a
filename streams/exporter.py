"""The Prometheus exporter: one HTTP endpoint (`/metrics`) per port and process.

    handle = EXPORTER.attach(registry, port)   # serve a registry on a port
    handle = serve(registry, port, "sink")     # the same; a port in use is logged
    handle.close()                             # the endpoint stops with its last registry

Each stream worker (`streams.metrics.WorkerMetrics`) and each sink
(`sinks.metrics.SinkMetrics`) keeps its own `CollectorRegistry`; the exporter serves
the union of the registries attached to a port, so a `tally run` process with a
worker and a sink answers on one port (`TALLY_METRICS_PORT`, 9108; 0 turns the
exporter off). Several processes on one host need distinct ports. The HTTP thread
only reads finished values.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# no `<counter>_created` series: they double the exposition and no panel or rule uses them
disable_created_metrics()


class _Union(Collector):
    """The metrics of every registry attached to one port."""

    def __init__(self) -> None:
        self.registries: list[CollectorRegistry] = []
        self.lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            regs = list(self.registries)
        for r in regs:
            yield from r.collect()


@dataclass
class _Endpoint:
    port: int
    union: _Union
    server: Any
    thread: threading.Thread


class ExporterHandle:
    def __init__(self, exporter: Exporter, port: int, registry: CollectorRegistry) -> None:
        self.exporter = exporter
        self.port = port
        self.registry = registry
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.exporter._detach(self.port, self.registry)


class Exporter:
    """HTTP endpoints (`/metrics`, any path) per port, shared by the registries of one
    process; an endpoint stops when its last registry detaches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[int, _Endpoint] = {}

    def attach(
        self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"
    ) -> ExporterHandle:
        """Serve `registry` on `port` (starting the endpoint if needed). Raises
        OSError when the port cannot be bound."""
        with self._lock:
            ep = self._endpoints.get(port)
            if ep is None:
                union = _Union()
                server, thread = start_http_server(port, addr=addr, registry=union)
                ep = self._endpoints[port] = _Endpoint(port, union, server, thread)
            with ep.union.lock:
                ep.union.registries.append(registry)
        return ExporterHandle(self, port, registry)

    def _detach(self, port: int, registry: CollectorRegistry) -> None:
        with self._lock:
            ep = self._endpoints.get(port)
            if ep is None:
                return
            with ep.union.lock:
                with contextlib.suppress(ValueError):
                    ep.union.registries.remove(registry)
                empty = not ep.union.registries
            if empty:
                del self._endpoints[port]
                ep.server.shutdown()
                ep.server.server_close()
                ep.thread.join(5)

    def ports(self) -> list[int]:
        with self._lock:
            return sorted(self._endpoints)


EXPORTER = Exporter()


def serve(registry: CollectorRegistry, port: int, what: str) -> ExporterHandle | None:
    """Attach to the process's exporter; a port that cannot be bound is logged (the
    worker keeps running without metrics) rather than stopping the pipeline."""
    if port <= 0:
        return None
    try:
        handle = EXPORTER.attach(registry, port)
    except OSError as exc:
        log.error(
            "metrics of the %s are not exported: port %d: %s (set TALLY_METRICS_PORT to a "
            "free port, or 0 to turn the exporter off)",
            what,
            port,
            exc,
        )
        return None
    log.info("metrics of the %s on http://0.0.0.0:%d/metrics", what, port)
    return handle
