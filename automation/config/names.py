"""Shapes of the values that reach shell scripts, file names, URLs and node paths, each with its teaching error."""

from __future__ import annotations

import ipaddress
import re

# What bash accepts after `export` (POSIX names); anything else would be parsed as shell code.
SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A name that is one path component and one shell word: no '/', no leading '.' or '-', no spaces.
FILE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Dynamo addresses components as dyn://<namespace>.<component>.<endpoint>, so a '.' would split it.
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# What clients send as "model": a Hugging Face id or a short alias; \w keeps non-ASCII letters of hf_id.
SERVED_NAME = re.compile(r"\w[\w.\-/:@+]{0,199}")
# RFC 1123: labels of letters, digits and '-', 1-63 long, not starting or ending with '-'.
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_IPV6_SCOPE = re.compile(r"[A-Za-z0-9_.-]+")

_FIXED_PLACE = "or ~/{rest} for the login user's home"

# Variables the node script (templates/dynamo/node_run.sh.j2) always sets itself, and where to set the
# value instead: an export from launch.env comes after them and would silently replace them. The bind
# addresses of versions.yaml (DYN_TCP_RPC_HOST, ...) are not here: the script sets them only for a node
# whose address is an IP, so for a hostname launch.env is where they go.
SCRIPT_ENV: dict[str, str] = {
    "HEAD_NODE_IP": "it is cluster.nodes[0].address",
    "ETCD_ENDPOINTS": "it follows cluster.nodes[0].address and infra.etcd_port",
    "NATS_SERVER": "it follows cluster.nodes[0].address and infra.nats_port",
    "DYN_NAMESPACE": "set dynamo.namespace instead",
    "MODEL_PATH": "set model.path instead",
    "SERVED_MODEL_NAME": "set model.served_name instead",
    "PYTHON": "set launch.python instead",
    "CUDA_VISIBLE_DEVICES": "the placement gives each worker its GPUs; remove it",
    "DYN_SYSTEM_PORT": "set launch.system_port_base instead",
    "DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS": "launch waits on the health it turns on; remove it",
    "DYN_SYSTEM_ENABLED": "the Dynamo release decides it; remove it",
    "SCRIPT_DIR": "it is the script's own folder; remove it",
    "STOP_GRACE_S": "export AUTODEPLOY_STOP_GRACE_S where the script runs instead",
    "RESOLVED_DIR": "it is the script's own variable; remove it",
    "PIDS": "it is the script's own variable; remove it",
    "NAMES": "it is the script's own variable; remove it",
    # Bash variables the script relies on: IFS splits its words, SECONDS times the stop grace.
    "IFS": "bash splits the script's words with it; remove it",
    "SECONDS": "the script times its stop grace with it; remove it",
}


def shown(value: object) -> str:
    """A value for an error line: quoted, control characters escaped, long ones cut."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_line(text: str) -> str:
    """text with control characters written as escapes (\\n), so that an error stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def check_file_token(value: str, what: str, why: str) -> str:
    """value, if it can be one file-name component and one shell word.

    Raises:
        ValueError: the teaching sentence, naming what it is for.
    """
    if not FILE_TOKEN.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a safe {what} (use letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit: {why})"
        )
    return value


def check_host(value: str) -> str:
    """value, if it is a hostname (RFC 1123) or an IPv4/IPv6 literal.

    Raises:
        ValueError: what kind of address it almost is, and an example of a good one.
    """
    if ":" in value:
        address, _, scope = value.partition("%")
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            pass
        else:
            # ipaddress takes any text after '%'; an interface name is all a scope can be.
            if "%" not in value or _IPV6_SCOPE.fullmatch(scope):
                return value
        raise ValueError(
            f"{shown(value)} is not an IPv6 address (like fd00::1, or fe80::1%eth0 with an interface)"
        )
    if re.fullmatch(r"[0-9.]+", value):
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(
                f"{shown(value)} is not an IPv4 address (it needs four numbers, each 0-255, like 10.0.0.1)"
            ) from None
        return value
    name = value[:-1] if value.endswith(".") else value
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(
            f"{shown(value)} is not a hostname or IP address (a hostname is letters, digits and '-' "
            "in dot-separated labels, like gpu-01.example.com)"
        )
    return value


def check_namespace(value: str) -> str:
    """value, if it can be the namespace part of a dyn:// address.

    Raises:
        ValueError: the allowed characters and why '.' is not one.
    """
    if not NAMESPACE.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a Dynamo namespace (use letters, digits, '_' or '-', no '.': "
            "it is the first part of dyn://<namespace>.<component>.<endpoint>)"
        )
    return value


def check_node_name(value: str) -> str:
    """value, if it can name a node's log and pid files.

    Raises:
        ValueError: the allowed characters.
    """
    return check_file_token(value, "node name", "it names log files")


def check_served_name(value: str) -> str:
    """value, if it is a model name a client can send (no spaces, quotes or shell characters).

    Raises:
        ValueError: the allowed characters and an example.
    """
    if not SERVED_NAME.fullmatch(value):
        raise ValueError(
            f"{shown(value)} is not a served model name (use letters, digits and . _ - / : @ +, "
            "like org/model-v1)"
        )
    return value


def check_node_dir(value: str) -> str:
    """value, if it is a directory every node can resolve by itself: absolute, `~` or `~/...`.

    Raises:
        ValueError: a relative path or `~user`, with the absolute and the `~/` spelling to use instead.
    """
    if not value.isprintable():
        raise ValueError(f"{shown(value)} holds a control character (a node path is one line)")
    if value == "~" or value.startswith(("~/", "/")):
        return value
    if not value:
        raise ValueError(
            "must not be empty (write /srv/autodeploy, " + _FIXED_PLACE.format(rest="autodeploy") + ")"
        )
    if value.startswith("~"):
        user, _, rest = value[1:].partition("/")
        rest = rest.strip("/")
        home = f"~/{rest}" if rest else "~"
        absolute = f"/home/{user}/{rest}" if rest else f"/home/{user}"
        raise ValueError(
            f"{shown(value)}: ~user is not expanded on the nodes "
            f"(write {absolute}, or {home} for the login user's home)"
        )
    rest = value.removeprefix("./").strip("/") or "autodeploy"
    raise ValueError(
        f"{shown(value)} is relative; the nodes need a fixed place "
        f"(write /srv/{rest}, " + _FIXED_PLACE.format(rest=rest) + ")"
    )


# A registry path below HOST:PORT: lower-case components separated by '/', as Docker's reference grammar.
_REGISTRY_PATH = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)


def check_registry(value: str) -> str:
    """value, if it is HOST[:PORT][/prefix] of a Docker registry (no scheme: docker adds it).

    Raises:
        ValueError: what is wrong with it, and an example of a good one.
    """
    example = "(like registry.example.com:5000 or 10.0.0.1:5000/team)"
    if "://" in value:
        raise ValueError(f"{shown(value)}: give HOST:PORT[/prefix] without a scheme {example}")
    where, _, prefix = value.partition("/")
    host, colon, port = where.rpartition(":") if where.count(":") == 1 else (where, "", "")
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{shown(value)}: the port must be a number from 1 to 65535 {example}")
    try:
        check_host(host)
    except ValueError as exc:
        raise ValueError(f"{shown(value)}: {exc}") from None
    if prefix and not _REGISTRY_PATH.fullmatch(prefix):
        raise ValueError(
            f"{shown(value)}: the part after the host must be lower-case names separated by '/' {example}"
        )
    return value
