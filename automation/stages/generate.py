"""The generate stage: engine YAMLs, per-node scripts, placement, mocker profiles, Kubernetes manifest."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml

from automation.config import PipelineConfig
from automation.config.names import SHELL_NAME
from automation.contracts import ConfigureOutputs, GenerateOutputs, recorded
from automation.engine_config import (
    TrtllmFamily,
    check_extra,
    deep_merge,
    engine_config,
    trtllm_family,
)
from automation.errors import InputError
from automation.k8s_manifest import PodPaths, render_manifest, template_context
from automation.perfmodel.plan import Plan, RolePlan
from automation.perfmodel.system import SystemSpec
from automation.placement import (
    Frontend,
    InfraEndpoints,
    ModelRef,
    NodeSpec,
    PlacedNode,
    Placement,
    Worker,
    assign_ports,
    on_node,
    place,
)
from automation.stage import Check, Stage, StageContext
from automation.state import StageRecord
from automation.versions import dynamo_release, versions_data

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# Dynamo reports a worker healthy once these endpoints serve (DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS).
HEALTH_STATUS = '["generate"]'
STOP_GRACE_S = 20  # seconds between TERM and KILL when a node script stops (docs/decisions.md, generate)


@functools.cache
def _environment() -> jinja2.Environment:
    """The templates' environment, made once: compiling every template per render dominated generate."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        # Bash's ${#ARRAY[@]} would open a Jinja comment.
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["sh"] = sh_quote
    env.filters["one_line"] = one_line
    return env


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as YAML literal blocks (engine configs inside the ConfigMap stay readable)."""


_LiteralDumper.add_representer(
    list,
    # Short lists of numbers read best inline: batch_sizes: [1, 2, 4, 8].
    lambda dumper, data: dumper.represent_sequence(
        "tag:yaml.org,2002:seq", data, flow_style=all(isinstance(x, (int, float, str)) for x in data)
    ),
)
_LiteralDumper.add_representer(
    str,
    lambda dumper, data: dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style="|" if "\n" in data else None
    ),
)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False, width=100)


def config_file(role: str) -> str:
    return f"{role}_config.yaml"


def sh_quote(value: Any) -> str:
    """A shell word for value; a leading ~/ becomes "$HOME"/ so that it still expands once quoted."""
    text = str(value)
    if text == "~":
        return '"$HOME"'
    if text.startswith("~/"):
        return '"$HOME"/' + shlex.quote(text[2:])
    return shlex.quote(text)


def one_line(value: Any) -> str:
    """Text for a comment line of a script or YAML file: control characters (a newline would end the comment
    and start code or keys) are written as escapes, e.g. \\n."""
    text = str(value)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class Expansion(str):
    """A shell word generate writes on purpose unquoted ("$PYTHON", "$SCRIPT_DIR/agg_config.yaml"): only
    words built from this class escape quoting, never a value that came from the pipeline file."""


def _sh_words(words: list[str]) -> str:
    """A command line, one option per line; every word is quoted except Expansion words."""
    lines: list[list[str]] = [[]]
    for word in words:
        if word.startswith("--"):
            lines.append([])
        lines[-1].append(str(word) if isinstance(word, Expansion) else shlex.quote(word))
    return " \\\n    ".join(" ".join(line) for line in lines if line)


def shell_env(items: list[tuple[str, str]], where: str) -> list[tuple[str, str]]:
    """(name, value) pairs for `export NAME=value` lines: names must be shell names (values are quoted).

    Raises:
        InputError: a name bash would read as code, naming the field.
    """
    for name, _ in items:
        if not SHELL_NAME.fullmatch(name):
            raise InputError(
                f"{where}: {name!r} is not an environment variable name",
                hint="use letters, digits and underscores, not starting with a digit",
            )
    return items


def _extra_for(config: PipelineConfig, role: str, family: TrtllmFamily) -> dict[str, Any]:
    """engine.extra, then engine.<role>.extra over it (nested mappings merged), each checked first so that
    an error names the field a person has to edit."""
    shared = config.engine.extra
    own = getattr(config.engine, role).extra
    check_extra(shared, family, "engine.extra")
    check_extra(own, family, f"engine.{role}.extra")
    return deep_merge(shared, own)


def _check_plan(plan: Plan) -> None:
    """A recorded plan that generate cannot render is refused here rather than half-rendered."""
    want = ["agg"] if plan.mode == "agg" else ["prefill", "decode"]
    order = {"agg": 0, "prefill": 1, "decode": 2}
    got = sorted((r.role for r in plan.roles), key=lambda name: order.get(name, len(order)))
    numbers = [plan.replicas] + [
        v for r in plan.roles for v in (r.parallelism.tp, r.parallelism.pp, r.workers, r.max_batch_size)
    ]
    if plan.mode not in ("agg", "disagg") or got != want or min(numbers) < 1:
        raise InputError(
            f"the recorded plan cannot be deployed: mode {plan.mode!r}, roles {got}, replicas {plan.replicas}",
            hint="re-run the configure stage (autodeploy run FILE --from configure)",
        )


class Generator:
    """Everything generate writes for one config and plan, as {relative path: bytes}, plus the placement."""

    def __init__(self, config: PipelineConfig, plan: Plan) -> None:
        _check_plan(plan)
        self.config = config
        self.plan = plan
        self.mocker = config.launch.engine == "mocker"
        version = config.backend.version
        if version is None:
            raise InputError("backend.version is not set", hint="set backend.version, e.g. 1.3.0rc23")
        self.trtllm_version = version
        self.tfam = trtllm_family(version)
        self.dfam = dynamo_release(config.dynamo.version)
        self.env = _environment()
        self.isl = max(plan.isl, config.workload.isl)
        self.seq_len = self.isl + max(plan.osl, config.workload.osl)  # the benchmark's requests
        self.kv_routing = config.dynamo.router_mode == "kv"
        self.head = config.cluster.nodes[0]
        self.files: dict[str, bytes] = {}
        self.kv_bytes_per_token = 0  # set with the mocker files (the real model's, for KV-transfer timing)
        self.placement = self._place()

    # ------------------------------------------------------------------------------------------ place

    def _place(self) -> Placement:
        """Place the workers, give them ports and names, and write it all down as the placement document."""
        config, plan = self.config, self.plan
        nodes = [
            NodeSpec(index=i, name=str(n.name), address=str(n.address), gpus=n.gpus)
            for i, n in enumerate(config.cluster.nodes)
        ]
        workers = place(plan, nodes)
        infra = config.infra
        head = str(self.head.address)
        reserved = {
            head: {
                config.dynamo.frontend_port,
                infra.etcd_port,
                infra.etcd_peer_port,
                infra.nats_port,
                infra.nats_monitor_port,
            }
        }
        assign_ports(workers, config.launch.system_port_base, reserved)
        components = self._components()
        ns = config.dynamo.namespace
        for w in workers:
            w.component = components[w.role]
            w.endpoint = f"dyn://{ns}.{w.component}.generate"
            w.config = config_file(w.role)
            w.health_url = f"http://{w.address}:{w.system_port}/health"
            if self.mocker:
                w.mocker_config = f"mocker/{w.id}.json"
        counts: dict[str, int] = {}
        for w in workers:
            counts[w.component] = counts.get(w.component, 0) + 1
        frontend_node = 0  # the head: etcd and NATS run there too
        placed = []
        for n in nodes:
            on = on_node(workers, n.index)
            placed.append(
                PlacedNode(
                    index=n.index,
                    name=n.name,
                    address=n.address,
                    gpus=n.gpus,
                    gpus_used=sum(len(w.gpus) for w in on),
                    script=f"node_{n.index}_run.sh" if n.index == frontend_node or on else None,
                    frontend=n.index == frontend_node,
                    workers=[w.id for w in on],
                )
            )
        port = config.dynamo.frontend_port
        return Placement(
            run=config.name,
            engine=config.launch.engine,
            mode=plan.mode,
            dynamo_version=config.dynamo.version,
            trtllm_version=self.trtllm_version,
            namespace=ns,
            model=ModelRef(path=config.model.path, served_name=config.model.served_name),
            replicas=plan.replicas,
            gpus_per_replica=plan.gpus_per_replica,
            total_gpus=plan.total_gpus,
            frontend=Frontend(
                node=frontend_node,
                name=nodes[frontend_node].name,
                address=head,
                port=port,
                url=f"http://{head}:{port}",
            ),
            infra=InfraEndpoints(
                etcd=f"http://{head}:{infra.etcd_port}", nats=f"nats://{head}:{infra.nats_port}"
            ),
            expected_instances=dict(sorted(counts.items())),
            nodes=placed,
            workers=workers,
        )

    def _components(self) -> dict[str, str]:
        """Dynamo component name of each role's workers (the mocker registers under its own names)."""
        if self.mocker:
            return {str(k): str(v) for k, v in versions_data()["mocker"]["components"].items()}
        return dict(self.dfam.components)

    # ----------------------------------------------------------------------------------------- render

    def render(self) -> dict[str, bytes]:
        """Every file, keyed by its path relative to generated/ (sorted, reproducible bytes)."""
        engine_cfgs = self._engine_configs()
        for role, cfg in engine_cfgs.items():
            self._text(config_file(role), self._engine_yaml(role, cfg))
        if self.mocker:
            self._mocker_files()
        for node in self.placement.nodes:
            if node.script:
                self._text(node.script, self._node_script(node))
        self._text("k8s_deploy.yaml", self._k8s(engine_cfgs))
        self._text("placement.json", self.placement.dump())
        self._text("README.md", self._readme())
        return dict(sorted(self.files.items()))

    def _text(self, path: str, text: str) -> None:
        self.files[path] = text.encode()

    def _engine_configs(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for role in self.plan.roles:
            extra = _extra_for(self.config, role.role, self.tfam)
            out[role.role] = engine_config(
                self.plan, role, self.tfam, extra, f"engine.{role.role}.extra", self.kv_routing
            )
        return out

    def _engine_yaml(self, role: str, cfg: dict[str, Any]) -> str:
        return self.env.get_template("trtllm/engine.yaml.j2").render(
            trtllm_version=self.trtllm_version,
            role=role,
            run_name=self.config.name,
            family=self.tfam.name,
            body=_dump(cfg).rstrip("\n"),
        )

    # ----------------------------------------------------------------------------------------- mocker

    def _mocker_files(self) -> None:
        from automation.mocker_profile import mocker_config, npz_bytes, timing_profile
        from automation.perfmodel import load_model

        model_ref = str(self.config.model.config_dir) if self.config.model.config_dir else self.plan.model
        model = load_model(model_ref)
        system = self._mocker_system()
        kv_bytes = round(model.kv_bytes_per_token_total())
        for role in self.plan.roles:
            profile = f"mocker/{role.role}_profile.npz"
            self.files[profile] = npz_bytes(timing_profile(model, system, role, self.isl, self.seq_len))
        for w in self.placement.workers:
            role = self.plan.role(w.role)
            bandwidth = self._kv_link_gbs(system) if w.role == "prefill" else None
            doc = mocker_config(
                role,
                self.isl,
                f"mocker/{role.role}_profile.npz",
                bandwidth,
                kv_bytes,
                self.seq_len,
                prefix_caching=self.kv_routing,
            )
            self._text(str(w.mocker_config), json.dumps(doc, indent=2) + "\n")
        self.kv_bytes_per_token = kv_bytes

    def _mocker_system(self) -> SystemSpec:
        """The system the mocker plays: the model in force (the plan's calibration included), or, with
        launch.mocker_speed, the shipped model's steps slowed by its factors: a stand-in for hardware
        that does not change when the model is calibrated (rehearsing `autodeploy calibrate`)."""
        from dataclasses import replace

        from automation.perfmodel import load_system

        speed = self.config.launch.mocker_speed
        if not speed.slows:
            return load_system(self.plan.system, self.plan.calibration)
        return replace(load_system(self.plan.system), prefill_scale=speed.prefill, decode_scale=speed.decode)

    def _kv_link_gbs(self, system: Any) -> float:
        """Bandwidth a prefill worker's KV cache moves over, as the performance model charges it: Dynamo's
        router pairs any prefill worker with any decode worker, so the link is the expected mix of NVLink
        and the inter-node link over the nodes the plan spans; shards move in parallel over the narrower
        side's GPUs."""
        from automation.perfmodel import compose

        cross = float(compose.cross_node_fraction(self.plan.total_gpus, system.gpus_per_node))
        links = min(self.plan.role("prefill").gpus_per_worker, self.plan.role("decode").gpus_per_worker)
        return compose.effective_kv_link_gbs(system, cross) * links

    # ---------------------------------------------------------------------------------------- scripts

    def _worker_env(self, w: Worker) -> list[str]:
        """Per-worker environment: its GPUs, its system (health) port, and only the variables the release
        still reads (versions.yaml's system_enabled_env and health_status_env)."""
        env = [f"CUDA_VISIBLE_DEVICES={','.join(map(str, w.gpus))}", f"DYN_SYSTEM_PORT={w.system_port}"]
        if self.mocker:
            return env
        if self.dfam.health_status_env:
            env.append(f"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS={HEALTH_STATUS}")
        if self.dfam.system_enabled_env:
            env.append("DYN_SYSTEM_ENABLED=true")
        return env

    def _worker_words(self, w: Worker) -> list[str]:
        """The worker's command after `env VAR=... `; $PYTHON, $MODEL_PATH etc. are expanded by the script."""
        if self.mocker:
            mod = versions_data()["mocker"]["module"]
            words = [PYTHON, "-m", mod, "--model-path", MODEL_PATH]
            words += ["--model-name", SERVED_MODEL_NAME]
            words += ["--extra-engine-args", Expansion(f'"$RESOLVED_DIR/{Path(str(w.mocker_config)).name}"')]
            words += ["--endpoint", w.endpoint]
            if w.role != "agg":
                words += ["--disaggregation-mode", w.role]
            # Overrides the value the mocker would derive from the (stand-in) checkpoint's config.json.
            words += ["--kv-bytes-per-token", str(self.kv_bytes_per_token)]
            return words
        words = [PYTHON, "-m", "dynamo.trtllm", self.dfam.model_flag, MODEL_PATH]
        words += ["--served-model-name", SERVED_MODEL_NAME]
        words += ["--extra-engine-args", Expansion(f'"$SCRIPT_DIR/{w.config}"')]
        words += ["--endpoint", w.endpoint]
        return words + self._role_args(self.plan.role(w.role))

    def _role_args(self, role: RolePlan) -> list[str]:
        """The worker flags a role's engine settings and the router decide, for this Dynamo release: the
        disaggregation mode, the KV block size (the engine YAML's tokens_per_block), KV events for a KV
        router, and attention DP where the release has a flag for it."""
        f = self.dfam
        words: list[str] = []
        if role.role != "agg":
            words += ["--disaggregation-mode", role.role, *f.strategy_flag]
            if role.role == "decode" and f.next_endpoint_flag:
                ns = self.config.dynamo.namespace
                words += [f.next_endpoint_flag, f"dyn://{ns}.{f.components['prefill']}.generate"]
        words += [f.kv_block_size_flag, str(role.tokens_per_block)]
        if self.kv_routing:
            words.append(f.kv_events_flag)
        if role.parallelism.attention_dp > 1 and f.attention_dp_flag:
            words.append(f.attention_dp_flag)
        return words

    def _frontend_words(self) -> list[str]:
        return [PYTHON, "-m", "dynamo.frontend", *self._frontend_args()]

    def _frontend_args(self) -> list[str]:
        d = self.config.dynamo
        args = ["--http-port", str(d.frontend_port), "--router-mode", d.router_mode]
        if self.kv_routing:
            args += [self.dfam.router_block_size_flag, str(self._router_block_size())]
        return args

    def _router_block_size(self) -> int:
        """The one KV block size a KV router can hash prompts with: every role's tokens_per_block.

        Raises:
            InputError: the roles' block sizes differ.
        """
        sizes = {r.role: r.tokens_per_block for r in self.plan.roles}
        if len(set(sizes.values())) > 1:
            shown = ", ".join(f"{role} {size}" for role, size in sizes.items())
            raise InputError(
                f"engine.tokens_per_block differs between roles ({shown}); the KV router hashes prompts "
                "in one block size",
                hint="set one engine.tokens_per_block for every role, or use dynamo.router_mode round-robin",
            )
        return next(iter(sizes.values()))

    def _node_script(self, node: PlacedNode) -> str:
        workers = []
        for w in self.placement.on_node(node.index):
            words = ["env", *self._worker_env(w), *self._worker_words(w)]
            workers.append({**w.model_dump(), "command": _sh_words(words)})
        launch = self.config.launch
        return self.env.get_template("dynamo/node_run.sh.j2").render(
            run_name=self.config.name,
            node=node,
            engine=launch.engine,
            frontend=node.frontend,
            frontend_command=_sh_words(self._frontend_words()),
            workers=workers,
            mocker=self.mocker,
            python=launch.python,
            grace_s=STOP_GRACE_S,
            head_address=self.head.address,
            etcd_port=self.config.infra.etcd_port,
            nats_port=self.config.infra.nats_port,
            namespace=self.config.dynamo.namespace,
            model_path=self.config.model.path,
            served_name=self.config.model.served_name,
            env=shell_env(sorted(launch.env.items()), "launch.env"),
            bind_env=shell_env([(name, node.address) for name in self.dfam.bind_address_env], "versions.yaml")
            if _is_ip(node.address)
            else [],
        )

    # -------------------------------------------------------------------------------------------- k8s

    def _k8s(self, engine_cfgs: dict[str, dict[str, Any]]) -> str:
        """The Kubernetes manifest (automation/k8s_manifest.py): the same workers, flags and engine configs
        as the node scripts, for the Dynamo operator of this release."""
        documents = render_manifest(
            self.config,
            self.plan,
            engine_files={config_file(r): _dump(c) for r, c in engine_cfgs.items()},
            worker_args=self._k8s_worker_args,
            frontend_args=self._frontend_args(),
            worker_env={"DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": HEALTH_STATUS}
            if self.dfam.health_status_env
            else {},
        )
        context = template_context(self.config, documents)
        return self.env.get_template("k8s/k8s_deploy.yaml.j2").render(**context)

    def _k8s_worker_args(self, role: RolePlan, pod: PodPaths) -> list[str]:
        """A worker's arguments in its pod: the checkpoint and engine config at the pod's paths. No --endpoint:
        the operator names the namespace (DYN_NAMESPACE) and the defaults give the components."""
        args = [self.dfam.model_flag, pod.model, "--served-model-name", str(self.config.model.served_name)]
        args += ["--extra-engine-args", f"{pod.engine_config_dir}/{config_file(role.role)}"]
        return args + self._role_args(role)

    # ----------------------------------------------------------------------------------------- readme

    def _readme(self) -> str:
        p, c = self.placement, self.config
        summary = describe_plan(self.plan, len(p.workers), c.launch.engine)
        nodes = []
        for n in p.nodes:
            parts = (["frontend"] if n.frontend else []) + [w.log_prefix[1:-1] for w in p.on_node(n.index)]
            nodes.append({**n.model_dump(), "processes": ", ".join(parts) or "—"})
        expected = " + ".join(f"{k}: {v}" for k, v in p.expected_instances.items())
        return self.env.get_template("README.md.j2").render(
            run_name=c.name,
            summary=summary,
            nodes=nodes,
            config_files=[config_file(r.role) for r in self.plan.roles],
            mocker=self.mocker,
            head_address=self.head.address,
            etcd_port=c.infra.etcd_port,
            nats_port=c.infra.nats_port,
            nats_monitor_port=c.infra.nats_monitor_port,
            model_path=c.model.path,
            work_dir=c.cluster.work_dir,
            runtime=c.launch.runtime,
            image=c.dynamo.image,
            python=c.launch.python,
            frontend_port=c.dynamo.frontend_port,
            expected=expected,
            served_name=c.model.served_name,
        )


# The script's own variables, expanded where a worker's command line names them.
PYTHON = Expansion('"$PYTHON"')
MODEL_PATH = Expansion('"$MODEL_PATH"')
SERVED_MODEL_NAME = Expansion('"$SERVED_MODEL_NAME"')


def _is_ip(address: str) -> bool:
    """Dynamo's bind variables take addresses, not host names."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def describe_plan(plan: Plan, workers: int, engine: str) -> str:
    roles = ", ".join(
        f"{r.workers}× {r.role} (tp {r.parallelism.tp}, pp {r.parallelism.pp}, batch {r.max_batch_size})"
        for r in plan.roles
    )
    return f"{plan.mode}, {plan.replicas} replica(s) of {roles}; {workers} workers, {engine} engine"


def render_files(config: PipelineConfig, plan: Plan) -> dict[str, bytes]:
    """Every generated file for config and plan, keyed by its path relative to generated/."""
    return Generator(config, plan).render()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    """Replace directory's contents with files (scripts executable), so no stale file survives."""
    if directory.exists():
        shutil.rmtree(directory)
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if rel.endswith(".sh"):
            path.chmod(0o755)


class Generate(Stage):
    """Done: every file is written and its hash recorded. Verify: the files still match their hashes."""

    name = "generate"
    summary = "render engine configs, node scripts and the Kubernetes manifest"
    needs = ("configure",)
    Outputs = GenerateOutputs
    revision = 4  # 4: per-release flags and environment; a Kubernetes manifest a cluster can apply

    def inputs(self, config: PipelineConfig) -> Mapping[str, Any]:
        return {
            "name": config.name,
            "model": {
                "hf_id": config.model.hf_id,
                "revision": config.model.revision,
                "path": config.model.path,
                "served_name": config.model.served_name,
                "config_dir": str(config.model.config_dir or ""),
            },
            # The manifest's download Job fetches what the checkpoint stage would.
            "checkpoint": config.checkpoint.model_dump(mode="json", include={"allow_patterns", "endpoint"}),
            "kubernetes": config.kubernetes.model_dump(mode="json"),
            "isl": config.workload.isl,
            "backend": config.backend.model_dump(),
            "engine": config.engine.model_dump(),
            "dynamo": config.dynamo.model_dump(
                mode="json", include={"version", "image", "namespace", "frontend_port", "router_mode"}
            ),
            "nodes": [{"name": n.name, "address": n.address, "gpus": n.gpus} for n in config.cluster.nodes],
            "work_dir": config.cluster.work_dir,
            "infra_ports": config.infra.model_dump(
                include={"etcd_port", "etcd_peer_port", "nats_port", "nats_monitor_port"}
            ),
            "launch": config.launch.model_dump(
                include={"runtime", "engine", "python", "system_port_base", "env"}
            ),
            # Only when set, so that runs recorded before it existed keep their fingerprint.
            **({"mocker_speed": speed.model_dump()} if (speed := config.launch.mocker_speed).slows else {}),
        }

    def run(self, ctx: StageContext) -> GenerateOutputs:
        plan = ctx.output(ConfigureOutputs).plan
        generator = Generator(ctx.config, plan)
        files = generator.render()
        directory = ctx.path("generated")
        write_files(directory, files)
        for rel in files:
            ctx.log.info("wrote generated/%s", rel)
        return GenerateOutputs(
            dir="generated",
            files={rel: _sha256(data) for rel, data in files.items()},
            placement="generated/placement.json",
            nodes=sum(1 for rel in files if rel.startswith("node_") and rel.endswith("_run.sh")),
            workers=len(generator.placement.workers),
            engine=ctx.config.launch.engine,
        )

    def verify(self, ctx: StageContext, record: StageRecord) -> Check:
        outputs = recorded(GenerateOutputs, record.outputs)
        if outputs is None:
            return Check.stale("no files recorded")
        base = ctx.path(outputs.dir)
        for rel, digest in sorted(outputs.files.items()):
            path = base / rel
            if not path.is_file():
                return Check.stale(f"generated/{rel} is missing")
            if _sha256(path.read_bytes()) != digest:
                return Check.stale(f"generated/{rel} changed")
        return Check.still_valid("files match their hashes")

    def describe(self, outputs: GenerateOutputs) -> str:
        nodes, workers, engine = outputs.nodes, outputs.workers, outputs.engine
        node_word = "node" if nodes == 1 else "nodes"
        worker_word = "worker" if workers == 1 else "workers"
        return f"{nodes} {node_word}, {workers} {worker_word}" + (f", {engine}" if engine else "")
