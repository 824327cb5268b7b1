"""Where every worker of every replica runs, and placement.json: the one document generate writes and launch reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from automation.errors import InputError
from automation.perfmodel.plan import Mode, Plan, Role, RolePlan

ROLE_ORDER: tuple[Role, ...] = ("agg", "prefill", "decode")  # prefill before decode within a replica
# Of placement.json; raise it when a reader of the old shape would misread the new one.
SCHEMA_VERSION: Literal[1] = 1


@dataclass(frozen=True)
class NodeSpec:
    """A node as placement sees it."""

    index: int
    name: str
    address: str
    gpus: int


class _Document(BaseModel):
    """A part of placement.json: a key it does not name is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Worker(_Document):
    """One worker process: what it is, where it runs, and how it is recognised once it serves."""

    id: str  # "<role>-<index>", unique in the cluster
    role: Role
    index: int  # per role, over the whole cluster
    replica: int
    replica_index: int  # per role, within its replica
    node: int
    node_name: str
    address: str
    gpus: list[int]
    system_port: int = 0
    component: str = ""
    endpoint: str = ""
    config: str = ""
    mocker_config: str | None = None
    log_prefix: str = ""
    health_url: str = ""


class PlacedNode(_Document):
    """A node of the cluster and what runs on it (script: None when nothing does)."""

    index: int
    name: str
    address: str
    gpus: int
    gpus_used: int
    script: str | None
    frontend: bool
    workers: list[str]  # worker ids


class ModelRef(_Document):
    path: str | None
    served_name: str | None


class Frontend(_Document):
    node: int
    name: str
    address: str
    port: int
    url: str


class InfraEndpoints(_Document):
    etcd: str
    nats: str


class Placement(_Document):
    """placement.json: every worker, the frontend, and the instance count per component launch must see."""

    schema_version: Literal[1] = SCHEMA_VERSION
    run: str
    engine: Literal["trtllm", "mocker"]
    mode: Mode
    dynamo_version: str
    trtllm_version: str
    namespace: str
    model: ModelRef
    replicas: int
    gpus_per_replica: int
    total_gpus: int
    frontend: Frontend
    infra: InfraEndpoints
    expected_instances: dict[str, int]
    nodes: list[PlacedNode]
    workers: list[Worker]

    def on_node(self, index: int) -> list[Worker]:
        return on_node(self.workers, index)

    def dump(self) -> str:
        """The text of placement.json."""
        return json.dumps(self.model_dump(mode="json"), indent=2) + "\n"

    @classmethod
    def load(cls, path: Path) -> Placement:
        """Read placement.json.

        Raises:
            InputError: the file is missing, not JSON, or not a placement document of this schema.
        """
        try:
            return cls.model_validate_json(Path(path).read_text())
        except OSError as exc:
            raise InputError(f"cannot read the placement {path}: {exc.strerror}", hint=_REGENERATE) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(
                f"{path} is not a placement document this autodeploy reads ({where}: {first['msg']})",
                hint=_REGENERATE,
            ) from None


_REGENERATE = "re-run the generate stage (autodeploy run FILE --from generate)"


def on_node(workers: list[Worker], index: int) -> list[Worker]:
    """The workers placed on node `index`."""
    return [w for w in workers if w.node == index]


def _replica_layout(plan: Plan) -> list[RolePlan]:
    """The workers of one replica, prefill before decode (one RolePlan per worker)."""
    roles = sorted(plan.roles, key=lambda r: ROLE_ORDER.index(r.role))
    return [r for r in roles for _ in range(r.workers)]


def _take(free: list[int], count: int) -> list[int]:
    """The lowest contiguous run of `count` free GPU indices (else the lowest ones); removed from free."""
    ordered = sorted(free)
    for start in range(len(ordered) - count + 1):
        run = ordered[start : start + count]
        if run[-1] - run[0] == count - 1:
            break
    else:
        run = ordered[:count]
    for gpu in run:
        free.remove(gpu)
    return run


def check_fits(plan: Plan, nodes: list[NodeSpec]) -> None:
    """Refuse plans that cannot be placed, before placing anything.

    Raises:
        InputError: a worker wider than every node, or more GPUs than the cluster has.
    """
    widest = max(n.gpus for n in nodes)
    for role in plan.roles:
        need = role.gpus_per_worker
        if need > widest:
            raise InputError(
                f"a {role.role} worker needs {need} GPUs (tp {role.parallelism.tp} × pp {role.parallelism.pp}"
                f" × attention-dp {role.parallelism.attention_dp}) but the largest node has {widest}; a worker must fit on one node "
                "until multi-node workers are supported",
                hint="lower tp/pp for this role (search.total_gpus or engine settings) or use larger nodes",
            )
    have = sum(n.gpus for n in nodes)
    if plan.total_gpus > have:
        raise InputError(
            f"the plan needs {plan.total_gpus} GPUs ({plan.replicas} replicas × {plan.gpus_per_replica}) "
            f"but the cluster has {have}",
            hint="lower search.total_gpus to the cluster's GPUs and re-run configure, or add nodes",
        )


def place(plan: Plan, nodes: list[NodeSpec]) -> list[Worker]:
    """Place every replica: whole on one node when one has room (KV moves over NVLink), else split.

    Replicas go first-fit in node order; a replica that fits on no single node is split worker by
    worker, widest first, preferring nodes that already hold part of it.

    Raises:
        InputError: see check_fits; or the GPUs left are too fragmented for a worker.
    """
    check_fits(plan, nodes)
    free = {n.index: list(range(n.gpus)) for n in nodes}
    counters: dict[Role, int] = {r.role: 0 for r in plan.roles}
    workers: list[Worker] = []
    layout = _replica_layout(plan)
    per_replica = sum(r.gpus_per_worker for r in layout)
    for replica in range(plan.replicas):
        home = next((n for n in nodes if len(free[n.index]) >= per_replica), None)
        targets: list[tuple[RolePlan, int]] = []
        if home is not None:
            targets = [(role, home.index) for role in layout]
        else:
            room = {n.index: len(free[n.index]) for n in nodes}
            used: list[int] = []
            for role in sorted(layout, key=lambda r: -r.gpus_per_worker):
                prefer = [n for n in nodes if n.index in used] + [n for n in nodes if n.index not in used]
                node = next((n for n in prefer if room[n.index] >= role.gpus_per_worker), None)
                if node is None:
                    raise InputError(
                        f"replica {replica}: no node has {role.gpus_per_worker} free GPUs left for a "
                        f"{role.role} worker (free per node: "
                        f"{', '.join(f'{n.name} {room[n.index]}' for n in nodes)})",
                        hint="use fewer replicas or GPUs per worker (search.total_gpus), or larger nodes",
                    )
                room[node.index] -= role.gpus_per_worker
                if node.index not in used:
                    used.append(node.index)
                targets.append((role, node.index))
            # Widest-first decided where; GPU indices and numbering still follow role order.
            targets.sort(key=lambda t: ROLE_ORDER.index(t[0].role))
        seen_in_replica: dict[Role, int] = {}
        for role, idx in targets:
            gpus = _take(free[idx], role.gpus_per_worker)
            node = nodes[idx]
            index = counters[role.role]
            counters[role.role] += 1
            rindex = seen_in_replica.get(role.role, 0)
            seen_in_replica[role.role] = rindex + 1
            workers.append(
                Worker(
                    id=f"{role.role}-{index}",
                    role=role.role,
                    index=index,
                    replica=replica,
                    replica_index=rindex,
                    node=idx,
                    node_name=node.name,
                    address=node.address,
                    gpus=gpus,
                    log_prefix=f"[{role.role} {index}]",
                )
            )
    workers.sort(key=lambda w: (w.node, ROLE_ORDER.index(w.role), w.index))
    return workers


def assign_ports(workers: list[Worker], base: int, reserved: dict[str, set[int]]) -> None:
    """Give each worker a DYN_SYSTEM_PORT: consecutive from base, unique per address.

    Nodes that share an address (a rehearsal on one machine) share the port space, and ports in
    `reserved[address]` (frontend, etcd, NATS) are skipped.

    Raises:
        InputError: the ports would run past 65535.
    """
    taken: dict[str, set[int]] = {}
    for worker in workers:
        used = taken.setdefault(worker.address, set(reserved.get(worker.address, set())))
        port = base
        while port in used:
            port += 1
        if port > 65535:
            raise InputError(
                f"no free DYN_SYSTEM_PORT at or above {base} on {worker.address}",
                hint="lower launch.system_port_base",
            )
        used.add(port)
        worker.system_port = port
