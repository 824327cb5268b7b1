"""Placement: invariants over a few hundred random clusters and plans, the single-node rule, and errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from automation.errors import InputError
from automation.perfmodel.plan import Plan
from automation.placement import NodeSpec, assign_ports, check_fits, on_node, place
from automation.stages.generate import Generator, render_files
from tests.generate.cases import MODEL, agg_plan, disagg_plan, golden_cases, pipeline, role

CASES = 400


def _nodes(gpus: list[int], shared_address: bool = False) -> list[NodeSpec]:
    return [
        NodeSpec(index=i, name=f"n{i}", address="127.0.0.1" if shared_address else f"10.0.0.{i + 1}", gpus=g)
        for i, g in enumerate(gpus)
    ]


def _random_case(rng: random.Random) -> tuple[Plan, list[NodeSpec]]:
    nodes = _nodes([rng.choice([1, 2, 4, 8, 8, 8]) for _ in range(rng.randint(1, 4))], rng.random() < 0.3)
    widest = max(n.gpus for n in nodes)
    tps = [t for t in (1, 2, 4, 8) if t <= widest]
    if rng.random() < 0.4:
        roles = (role("agg", tp=rng.choice(tps), pp=1),)
        mode = "agg"
    else:
        p = role("prefill", tp=rng.choice(tps), workers=rng.randint(1, 4))
        d = role("decode", tp=rng.choice(tps), workers=rng.randint(1, 3))
        roles, mode = (p, d), "disagg"
    per_replica = sum(r.gpus_per_worker * r.workers for r in roles)
    total = sum(n.gpus for n in nodes)
    replicas = max(1, rng.randint(1, max(1, total // per_replica)))
    plan = Plan(mode=mode, model=MODEL, system="h200_sxm", roles=roles, replicas=replicas, isl=1000, osl=100)
    return plan, nodes


def test_invariants_over_random_placements() -> None:
    rng = random.Random(20261129)
    placed = refused = 0
    for _ in range(CASES):
        plan, nodes = _random_case(rng)
        try:
            workers = place(plan, nodes)
        except InputError as exc:
            # Only a plan larger than the cluster or too fragmented to place may be refused.
            assert "cluster has" in str(exc) or "free GPUs left" in str(exc) or "largest node" in str(exc)
            refused += 1
            continue
        placed += 1
        head = nodes[0].address
        assign_ports(workers, 8000, {head: {8000}})  # the frontend's port on the head
        for node in nodes:
            gpus = [g for w in on_node(workers, node.index) for g in w.gpus]
            assert len(gpus) <= node.gpus
            assert len(set(gpus)) == len(gpus), "a GPU used twice on a node"
            assert all(0 <= g < node.gpus for g in gpus)
        assert sum(len(w.gpus) for w in workers) == plan.replicas * plan.gpus_per_replica
        by_address = Counter((w.address, w.system_port) for w in workers)
        assert max(by_address.values()) == 1, "a system port used twice on one address"
        assert all(w.system_port != 8000 for w in workers if w.address == head)
        per_role = Counter(w.role for w in workers)
        assert per_role == {r.role: r.workers * plan.replicas for r in plan.roles}
        for r in plan.roles:
            assert sorted(w.index for w in workers if w.role == r.role) == list(
                range(r.workers * plan.replicas)
            )
        # A replica that fits on a node with room stays on one node.
        for replica in range(plan.replicas):
            nodes_used = {w.node for w in workers if w.replica == replica}
            if plan.gpus_per_replica > max(n.gpus for n in nodes):
                continue
            if len(nodes_used) > 1:
                # It was split: then no node had that many GPUs free when it was placed.
                earlier = [w for w in workers if w.replica < replica]
                free = [n.gpus - sum(len(w.gpus) for w in earlier if w.node == n.index) for n in nodes]
                assert max(free) < plan.gpus_per_replica
    assert placed > CASES // 2 and refused > 0


def test_exactly_one_frontend_and_scripts_only_where_workers_run() -> None:
    config = pipeline([8, 8, 8])
    generator = Generator(config, agg_plan(tp=4, replicas=3))
    files = generator.render()
    scripts = sorted(f for f in files if f.startswith("node_"))
    assert scripts == ["node_0_run.sh", "node_1_run.sh"]
    assert sum("-m dynamo.frontend" in files[s].decode() for s in scripts) == 1
    doc = generator.placement
    assert [n.script for n in doc.nodes] == ["node_0_run.sh", "node_1_run.sh", None]
    assert doc.expected_instances == {"backend": 3}


def test_replica_stays_on_one_node_when_it_fits() -> None:
    workers = place(disagg_plan(p_tp=1, p_workers=2, d_tp=2, replicas=4), _nodes([8, 8]))
    for replica in range(4):
        assert len({w.node for w in workers if w.replica == replica}) == 1


def test_mixed_case_spans_nodes_only_for_the_last_replica() -> None:
    workers = place(disagg_plan(p_tp=1, p_workers=3, d_tp=2, replicas=3), _nodes([8, 8]))
    spans = [len({w.node for w in workers if w.replica == r}) for r in range(3)]
    assert spans == [1, 1, 2]


def test_ports_skip_reserved_and_continue_across_nodes_on_one_address() -> None:
    workers = place(agg_plan(tp=1, replicas=4), _nodes([2, 2], shared_address=True))
    assign_ports(workers, 8080, {"127.0.0.1": {8081}})
    assert [w.system_port for w in workers] == [8080, 8082, 8083, 8084]


def test_worker_wider_than_a_node_is_refused() -> None:
    with pytest.raises(InputError, match="until multi-node workers are supported"):
        check_fits(agg_plan(tp=8), _nodes([4, 4]))


def test_plan_larger_than_the_cluster_is_refused() -> None:
    with pytest.raises(InputError, match=r"needs 16 GPUs .* cluster has 8"):
        place(agg_plan(tp=4, replicas=4), _nodes([8]))


def test_fragmented_cluster_is_refused_with_the_free_gpus() -> None:
    # 3 replicas of one tp4 worker on 3 + 3 + 4 GPUs: the total fits, the workers do not.
    with pytest.raises(InputError, match="free GPUs left"):
        place(agg_plan(tp=4, replicas=2), _nodes([3, 3, 4]))


def test_rendered_random_deployments_have_one_frontend_and_consistent_placement() -> None:
    rng = random.Random(7)
    rendered = 0
    while rendered < 60:
        plan, nodes = _random_case(rng)
        config = pipeline([n.gpus for n in nodes])
        try:
            generator = Generator(config, plan)
        except InputError:
            continue
        files = generator.render()
        rendered += 1
        scripts = [rel for rel in files if rel.startswith("node_")]
        frontends = [rel for rel in scripts if "-m dynamo.frontend" in files[rel].decode()]
        assert frontends == ["node_0_run.sh"]
        doc = generator.placement
        assert doc.frontend.node == 0 and doc.frontend.address == "10.0.0.1"
        assert sum(doc.expected_instances.values()) == len(doc.workers)
        for node in doc.nodes:
            text = files[node.script].decode() if node.script else ""
            assert text.count("\nstart '") == len(node.workers)
            ports = [w.system_port for w in doc.workers if w.node == node.index]
            assert len(ports) == len(set(ports))


def test_placement_json_is_one_typed_model(tmp_path) -> None:
    """generate writes placement.json with Placement.dump(); launch reads it back with Placement.load()."""
    from automation.placement import Placement

    config, plan = golden_cases()["mixed_span"]
    files = render_files(config, plan)
    path = tmp_path / "placement.json"
    path.write_bytes(files["placement.json"])
    placement = Placement.load(path)
    assert placement.dump() == files["placement.json"].decode()
    assert placement.frontend.url == "http://10.0.0.1:8000" and placement.frontend.node == 0
    assert [n.script for n in placement.nodes] == ["node_0_run.sh", "node_1_run.sh"]
    assert [n.index for n in placement.nodes] == [0, 1]
    assert placement.expected_instances == {"backend": 3, "prefill": 9}
    assert sum(len(w.gpus) for w in placement.workers) == plan.total_gpus
    assert placement.workers[0].health_url.startswith("http://10.0.0.1:")
    # A document with a key the model does not know is refused, not half-read.
    import json as _json

    data = _json.loads(files["placement.json"])
    data["nodes"][0]["surprise"] = 1
    path.write_text(_json.dumps(data))
    with pytest.raises(InputError, match="placement"):
        Placement.load(path)
