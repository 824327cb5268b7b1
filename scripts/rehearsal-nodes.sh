#!/usr/bin/env bash
# Two rehearsal "nodes" on this machine: network namespaces on a bridge, each with its own sshd.
#   scripts/rehearsal-nodes.sh up     # nodes 10.201.0.1 and 10.201.0.2, controller namespace 10.201.0.100
#   scripts/rehearsal-nodes.sh down
# Then run autodeploy from the controller namespace:
#   ip netns exec adr-ctl .venv/bin/autodeploy run examples/two-node-rehearsal.yaml
# Nothing is added to the root namespace; the namespaces share this machine's filesystem (as nodes
# sharing a file system would). Needs root, iproute2 and openssh-server.
set -euo pipefail
dir=/tmp/autodeploy-rehearsal/ssh
prefix=adr
nodes=("$prefix-n0:10.201.0.1" "$prefix-n1:10.201.0.2" "$prefix-ctl:10.201.0.100")

down() {
  for spec in "${nodes[@]}" "$prefix-br:"; do
    ns=${spec%%:*}
    if ip netns list | grep -qw "$ns"; then
      for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$ns"
    fi
  done
}

up() {
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
CONF
    ip netns exec "$ns" setsid /usr/sbin/sshd -D -e -f "$dir/sshd_$ns.conf" > "$dir/sshd_$ns.log" 2>&1 < /dev/null &
    echo "$address $(cut -d' ' -f1-2 "$dir/host_ed25519.pub")" >> "$dir/known_hosts"
  done
  for spec in "${nodes[@]:0:2}"; do
    address=${spec#*:}
    for _ in $(seq 50); do
      ip netns exec "$prefix-ctl" bash -c "exec 3<>/dev/tcp/$address/22" 2>/dev/null && break
      sleep 0.1
    done
  done
  echo "nodes up: ${nodes[0]#*:} (head) and ${nodes[1]#*:}; run autodeploy with: ip netns exec $prefix-ctl ..."
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
