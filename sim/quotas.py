"""YC's quotas, as the simulator enforces them: configuration, the check, and what it counted.

- Concurrent operations per folder (YC's default: 15): a Create or Delete that would start one more
  is refused on the RPC itself with RESOURCE_EXHAUSTED, as YC does.
- Instances, vCPUs and RAM per cloud (the whole simulator is one cloud): a Create that would go
  over is refused on the RPC. Waiting does not fix these; an operator raising the quota does.
- An optional API rate limit (requests per second over every RPC, a token bucket one second deep).

Every RESOURCE_EXHAUSTED the simulator answers is counted, and so is the highest number of
operations it ever had in flight, so that a benchmark can assert the control plane stayed within
its budget instead of riding retries. `None` means no limit.
"""

import dataclasses
import time

from sim.model import ApiError

DEFAULT_CONCURRENT_OPERATIONS = 15
_GIB = 1 << 30

# The quota ids YC names in its messages.
OPERATIONS_QUOTA = "compute.operationsInProgress.count"
INSTANCES_QUOTA = "compute.instances.count"
CORES_QUOTA = "compute.instanceCores.count"
MEMORY_QUOTA = "compute.instanceMemory.size"


def exceeded(quota: str) -> ApiError:
    return ApiError("RESOURCE_EXHAUSTED", f"Quota limit {quota} exceeded")


@dataclasses.dataclass
class Limits:
    operations: int | None = DEFAULT_CONCURRENT_OPERATIONS  # in flight, per folder
    instances: int | None = None  # per cloud
    cores: int | None = None  # per cloud
    memory_gb: int | None = None  # per cloud
    rate: float | None = None  # API requests per second

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def updated(self, body: dict) -> "Limits":
        """These limits with the fields of `body` applied; ValueError names a bad one."""
        unknown = body.keys() - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown quota {sorted(unknown)[0]!r}")
        changes: dict[str, int | float | None] = {}
        for name, value in body.items():
            if value is None:
                changes[name] = None
            elif name == "rate":
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise ValueError("rate must be null (no limit) or requests per second, > 0")
                changes[name] = float(value)
            elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                changes[name] = value
            else:
                raise ValueError(f"{name} must be null (no limit) or a number, zero or more")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


class Quotas:
    """Not thread-safe: the world calls it under its lock."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.exhausted = 0  # RESOURCE_EXHAUSTED answers given (quotas, rate limit, injected)
        self.max_operations = 0  # the most operations ever in flight in one folder
        self._tokens = 0.0
        self._refilled = time.monotonic()

    def reset_counters(self) -> None:
        self.exhausted = 0
        self.max_operations = 0

    def admit_request(self) -> None:
        """The rate limit: one token per request, refilled at `rate` per second."""
        rate = self.limits.rate
        if rate is None:
            return
        now = time.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1:
            raise ApiError("RESOURCE_EXHAUSTED", "Request rate limit exceeded, retry later")
        self._tokens -= 1

    def admit_operation(self, in_flight: int) -> None:
        """Before an operation starts in a folder that has `in_flight` running."""
        if self.limits.operations is not None and in_flight >= self.limits.operations:
            raise exceeded(OPERATIONS_QUOTA)

    def started(self, in_flight: int) -> None:
        self.max_operations = max(self.max_operations, in_flight)

    def admit_instance(
        self, instances: int, cores: int, memory: int, new_cores: int, new_memory: int
    ):
        """Before a VM is created in a cloud that has these (memory in bytes)."""
        limits = self.limits
        if limits.instances is not None and instances + 1 > limits.instances:
            raise exceeded(INSTANCES_QUOTA)
        if limits.cores is not None and cores + new_cores > limits.cores:
            raise exceeded(CORES_QUOTA)
        if limits.memory_gb is not None and memory + new_memory > limits.memory_gb * _GIB:
            raise exceeded(MEMORY_QUOTA)

    def usage(self, instances: int, cores: int, memory: int, operations: int) -> dict:
        return {
            "instances": instances,
            "cores": cores,
            "memory_gb": round(memory / _GIB, 3),
            "operations": operations,
        }
