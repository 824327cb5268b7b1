"""Where every worker of every replica runs: nodes, GPU indices, health ports, component names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from automation.errors import InputError
from automation.perfmodel.plan import Plan, RolePlan

ROLE_ORDER = ("agg", "prefill", "decode")


@dataclass(frozen=True)
class NodeSpec:
    """A node as placement sees it."""

    index: int
    name: str
    address: str
    gpus: int


@dataclass
class Worker:
    """One worker process: what it is, where it runs, and how it is recognised once it serves."""

    id: str  # "<role>-<index>", unique in the cluster
    role: str
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


@dataclass
class Placement:
    """Every worker, the frontend, and the instance count per component launch must see."""

    nodes: list[NodeSpec]
    workers: list[Worker]
    frontend_node: int = 0
    frontend_port: int = 8000
    expected_instances: dict[str, int] = field(default_factory=dict)

    def on_node(self, index: int) -> list[Worker]:
        return [w for w in self.workers if w.node == index]

    def gpus_used(self, index: int) -> int:
        return sum(len(w.gpus) for w in self.on_node(index))

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [asdict(n) for n in self.nodes],
            "workers": [asdict(w) for w in self.workers],
            "frontend_node": self.frontend_node,
            "frontend_port": self.frontend_port,
            "expected_instances": dict(self.expected_instances),
        }


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
                f"a {role.role} worker needs {need} GPUs (tp {role.tp} × pp {role.pp} × attention-dp "
                f"{role.attention_dp}) but the largest node has {widest}; a worker must fit on one node "
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


def place(plan: Plan, nodes: list[NodeSpec]) -> Placement:
    """Place every replica: whole on one node when one has room (KV moves over NVLink), else split.

    Replicas go first-fit in node order; a replica that fits on no single node is split worker by
    worker, widest first, preferring nodes that already hold part of it.

    Raises:
        InputError: see check_fits; or the GPUs left are too fragmented for a worker.
    """
    check_fits(plan, nodes)
    free = {n.index: list(range(n.gpus)) for n in nodes}
    counters = {r.role: 0 for r in plan.roles}
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
        seen_in_replica: dict[str, int] = {}
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
    return Placement(nodes=list(nodes), workers=workers)


def assign_ports(placement: Placement, base: int, reserved: dict[str, set[int]]) -> None:
    """Give each worker a DYN_SYSTEM_PORT: consecutive from base, unique per address.

    Nodes that share an address (a rehearsal on one machine) share the port space, and ports in
    `reserved[address]` (frontend, etcd, NATS) are skipped.

    Raises:
        InputError: the ports would run past 65535.
    """
    taken: dict[str, set[int]] = {}
    for worker in placement.workers:
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
