#!/usr/bin/env bash
# Two rehearsal "nodes" on this machine: network namespaces on a bridge, each with its own sshd.
#   scripts/rehearsal-nodes.sh up [--docker]  # nodes 10.201.0.1 and 10.201.0.2, controller 10.201.0.100
#   scripts/rehearsal-nodes.sh down
# Then run autodeploy from the controller namespace:
#   ip netns exec adr-ctl .venv/bin/autodeploy run examples/two-node-rehearsal.yaml
# With --docker each node also gets a Docker engine of its own, running in its namespace (data and
# socket under /tmp/autodeploy-rehearsal/docker/<namespace>/; an SSH session on the node has DOCKER_HOST
# set to it, so `ssh root@10.201.0.2 docker ...` reaches node 1's engine), and a registry serves plain
# HTTP on 10.201.0.1:5000 in node 0's namespace (storage under /tmp/autodeploy-rehearsal/registry),
# which both engines accept as an insecure registry.
# Nothing is added to the root namespace; the namespaces share this machine's filesystem (as nodes
# sharing a file system would). Needs root, iproute2 and openssh-server (--docker: docker.io, curl and
# docker-registry).
set -euo pipefail
base=/tmp/autodeploy-rehearsal
dir=$base/ssh
docker_dir=$base/docker
registry_dir=$base/registry
prefix=adr
nodes=("$prefix-n0:10.201.0.1" "$prefix-n1:10.201.0.2" "$prefix-ctl:10.201.0.100")
registry=10.201.0.1:5000

# dockerd runs in the node's network namespace and in a mount namespace of its own: unlike `ip netns
# exec`, that leaves /sys (and the cgroups runc needs) as they are, and its mounts go with its processes.
# A system containerd is hidden so that each engine starts its own (runc must see that engine's mounts).
# shellcheck disable=SC2016  # expanded by the inner sh
in_namespace='if [ -S /run/containerd/containerd.sock ]; then mount -t tmpfs tmpfs /run/containerd; fi; exec "$@"'

stop_docker() {
  local spec sock pidfile pid ids state pids=()
  for spec in "${nodes[@]:0:2}"; do
    sock=$docker_dir/${spec%%:*}/docker.sock pidfile=$docker_dir/${spec%%:*}/docker.pid
    if [[ -S $sock ]]; then
      ids=$(timeout 20 docker -H "unix://$sock" ps -aq 2>/dev/null || true)
      if [[ -n $ids ]]; then
        # shellcheck disable=SC2086  # one id per word
        timeout 60 docker -H "unix://$sock" rm -f $ids > /dev/null 2>&1 || true
      fi
    fi
    if [[ -f $pidfile ]]; then
      pid=$(< "$pidfile")
      kill -TERM "$pid" 2> /dev/null && pids+=("$pid")  # dockerd stops the containerd it started
      rm -f "$pidfile"
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 150); do
      state=$(ps -o stat= -p "$pid" || true)
      [[ -z $state || $state == Z* ]] && break  # gone (or exited, not yet reaped)
      sleep 0.1
    done
  done
  if [[ -f $registry_dir/registry.pid ]]; then
    kill -TERM "$(< "$registry_dir/registry.pid")" 2> /dev/null || true
    rm -f "$registry_dir/registry.pid"
  fi
}

down() {
  stop_docker
  for spec in "${nodes[@]}" "$prefix-br:"; do
    ns=${spec%%:*}
    if ip netns list | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
  # What an engine left outside its namespaces: shims, and mounts under its exec root (normally none).
  for pid in $(pgrep -f -- "containerd.*$docker_dir/" || true); do kill -9 "$pid" 2> /dev/null || true; done
  awk -v d="$docker_dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r point; do umount -l "$point" 2> /dev/null || true; done
}

start_docker() {
  local spec ns address version config
  version=$(dockerd --version | sed -E 's/^Docker version ([0-9]+)\..*/\1/')
  mkdir -p "$registry_dir/data"
  for spec in "${nodes[@]:0:2}"; do
    ns=${spec%%:*}
    mkdir -p "$docker_dir/$ns"
    config='{}'
    # before Docker 23, an engine's ID is that of /etc/docker/key.json unless it has a key of its own
    [[ $version =~ ^[0-9]+$ ]] && ((version < 23)) && config="{\"deprecated-key-path\": \"$docker_dir/$ns/key.json\"}"
    echo "$config" > "$docker_dir/$ns/daemon.json"
    setsid nsenter --net="/run/netns/$ns" -- unshare --mount --propagation slave -- \
      sh -c "$in_namespace" sh dockerd \
      --config-file "$docker_dir/$ns/daemon.json" \
      --data-root "$docker_dir/$ns/data" \
      --exec-root "$docker_dir/$ns/exec" \
      -H "unix://$docker_dir/$ns/docker.sock" \
      --pidfile "$docker_dir/$ns/docker.pid" \
      --bridge none --iptables=false \
      --insecure-registry "$registry" \
      > "$docker_dir/$ns/dockerd.log" 2>&1 < /dev/null &
  done
  cat > "$registry_dir/config.yml" <<CONF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $registry_dir/data
  delete:
    enabled: true
http:
  addr: $registry
  secret: $(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
CONF
  ip netns exec "$prefix-n0" setsid /usr/bin/docker-registry serve "$registry_dir/config.yml" \
    > "$registry_dir/registry.log" 2>&1 < /dev/null &
  echo $! > "$registry_dir/registry.pid"
  for spec in "${nodes[@]:0:2}"; do
    ns=${spec%%:*}
    for _ in $(seq 600); do
      docker -H "unix://$docker_dir/$ns/docker.sock" info > /dev/null 2>&1 && continue 2
      sleep 0.1
    done
    echo "dockerd of $ns did not come up: see $docker_dir/$ns/dockerd.log" >&2
    exit 1
  done
  for _ in $(seq 300); do
    ip netns exec "$prefix-n0" curl -sf -o /dev/null --max-time 2 "http://$registry/v2/" && return 0
    sleep 0.1
  done
  echo "the registry on $registry did not come up: see $registry_dir/registry.log" >&2
  exit 1
}

up() {
  local docker=$1
  down
  mkdir -p "$dir" /run/sshd
  [[ -f $dir/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$dir/id_ed25519"
  [[ -f $dir/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f "$dir/host_ed25519"
  cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
  chmod 600 "$dir/authorized_keys" "$dir/host_ed25519"
  : > "$dir/known_hosts"
  ip netns add "$prefix-br"
  ip -n "$prefix-br" link add br0 type bridge
  ip -n "$prefix-br" link set br0 up
  i=0
  for spec in "${nodes[@]}"; do
    ns=${spec%%:*} address=${spec#*:}
    ip netns add "$ns"
    ip -n "$prefix-br" link add "p$i" type veth peer name eth0 netns "$ns"
    ip -n "$prefix-br" link set "p$i" master br0 up
    ip -n "$ns" addr add "$address/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    i=$((i + 1))
    [[ $ns == "$prefix-ctl" ]] && continue
    cat > "$dir/sshd_$ns.conf" <<CONF
ListenAddress $address
Port 22
HostKey $dir/host_ed25519
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile $dir/authorized_keys
StrictModes no
UsePAM no
MaxStartups 100
MaxSessions 100
CONF
    if [[ $docker == yes ]]; then
      echo "SetEnv DOCKER_HOST=unix://$docker_dir/$ns/docker.sock" >> "$dir/sshd_$ns.conf"
    fi
    ip netns exec "$ns" setsid /usr/sbin/sshd -D -e -f "$dir/sshd_$ns.conf" > "$dir/sshd_$ns.log" 2>&1 < /dev/null &
    echo "$address $(cut -d' ' -f1-2 "$dir/host_ed25519.pub")" >> "$dir/known_hosts"
  done
  [[ $docker == yes ]] && start_docker
  for spec in "${nodes[@]:0:2}"; do
    address=${spec#*:}
    for _ in $(seq 50); do
      ip netns exec "$prefix-ctl" bash -c "exec 3<>/dev/tcp/$address/22" 2>/dev/null && break
      sleep 0.1
    done
  done
  echo "nodes up: ${nodes[0]#*:} (head) and ${nodes[1]#*:}; run autodeploy with: ip netns exec $prefix-ctl ..."
  echo "ssh: key $dir/id_ed25519, known_hosts $dir/known_hosts"
  if [[ $docker == yes ]]; then
    for spec in "${nodes[@]:0:2}"; do
      echo "docker engine of ${spec#*:} (namespace ${spec%%:*}): unix://$docker_dir/${spec%%:*}/docker.sock"
    done
    echo "registry: $registry (plain HTTP, in ${nodes[0]%%:*}; storage $registry_dir/data)"
  fi
}

case "${1:-}" in
  up)
    case "${2:-}" in
      "") up no ;;
      --docker) up yes ;;
      *) echo "usage: $0 up [--docker] | down" >&2; exit 2 ;;
    esac
    ;;
  down) down ;;
  *) echo "usage: $0 up [--docker] | down" >&2; exit 2 ;;
esac
