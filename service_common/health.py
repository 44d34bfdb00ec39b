"""grpc.health.v1 for our servers: grpcio's asyncio servicer, with its Watch fixed for many watchers.

grpcio-health-checking's asyncio ``HealthServicer`` keeps one Condition per watched service name and
drops it when *a* Watch of that name ends (its ``finally``), even while other Watches of the name still
wait on it; ``set`` then finds no Condition and notifies nobody. So once one of two clients watching ""
went away, the other was never told of a change again (seen in tests: a Watch still said SERVING while
Check said NOT_SERVING). Here a name's Condition lives while any Watch of it does; it is dropped with
the last one, so watchers of arbitrary names still cost nothing once they leave.
"""

from __future__ import annotations

from collections import Counter

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer


class Health(HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._watching: Counter[str] = Counter()  # service name -> Watch calls open on it

    def watching(self, service: str) -> int:
        """How many Watch calls of ``service`` are open."""
        return self._watching[service]

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        service = request.service
        condition = self._server_watchers[service]  # created on first use, shared by every Watch of it
        self._watching[service] += 1
        last = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
                    if status != last:  # only the latest status matters to a watcher
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                    await condition.wait()
        finally:
            self._watching[service] -= 1
            if not self._watching[service]:
                del self._watching[service]
                self._server_watchers.pop(service, None)
