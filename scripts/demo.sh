#!/usr/bin/env bash
# The main job: two pods (network namespaces) attached through the installed plugin exactly as
# a runtime would call it, their addresses, pings pod->pod and pod->gateway, then DEL and proof
# that nothing is left. Only namespaces this script makes are sent traffic.
set -euo pipefail
PLUGIN=${1:-/opt/cni/bin/loxi-cni}
BRIDGE=loxidemo0
DATA=$(mktemp -d /tmp/loxi-demo.XXXXXX)
PODS=(loxi-demo-a loxi-demo-b)

AGENT_PID=
export LOXI_CNI_SOCKET=$DATA/agent.sock LOXI_CNI_STATE_DIR=$DATA/state

cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  for pod in "${PODS[@]}"; do ip netns del "$pod" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

conf() {
  cat <<JSON
{"cniVersion":"1.1.0","name":"loxi-demo","type":"loxi-cni","bridge":"$BRIDGE",
 "isGateway":true,"mtu":1500,"hairpinMode":false,"promiscMode":false,
 "ipam":{"type":"host-local","subnet":"10.244.1.0/24","dataDir":"$DATA",
         "routes":[{"dst":"10.0.0.0/8"}]}}
JSON
}

cni() { # cni COMMAND POD
  CNI_COMMAND=$1 CNI_CONTAINERID="demo-$2" CNI_NETNS="/var/run/netns/$2" CNI_IFNAME=eth0 \
    CNI_PATH=/opt/cni/bin:/usr/lib/cni "$PLUGIN" <<<"$(conf)"
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "plugin: $PLUGIN"
"$PLUGIN" version
step "node agent on $LOXI_CNI_SOCKET (the plugin forwards to it; without it, it runs in-process)"
"$PLUGIN" agent --socket "$LOXI_CNI_SOCKET" --metrics off 2>"$DATA/agent.log" &
AGENT_PID=$!
for _ in $(seq 50); do [ -S "$LOXI_CNI_SOCKET" ] && break; sleep 0.1; done
"$PLUGIN" status --socket "$LOXI_CNI_SOCKET"
for pod in "${PODS[@]}"; do
  ip netns add "$pod"
  ip -n "$pod" link set lo up
  step "ADD $pod"
  cni ADD "$pod" | tee "$DATA/result-$pod" | /usr/bin/python3 -m json.tool
done

step "the pods' addresses, as the kernel holds them"
for pod in "${PODS[@]}"; do
  printf '%s: ' "$pod"; ip -n "$pod" -br addr show eth0
  ip -n "$pod" route | sed 's/^/    /'
done
step "host side: bridge $BRIDGE and its ports"
ip -br addr show "$BRIDGE"
ip -br link show master "$BRIDGE"

step "agent status after the ADDs"
"$PLUGIN" status --socket "$LOXI_CNI_SOCKET"

ip_b=$(ip -n loxi-demo-b -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
step "ping pod a -> pod b ($ip_b)"
ip netns exec loxi-demo-a ping -c 2 -W 2 "$ip_b"
step "ping pod a -> gateway 10.244.1.1"
ip netns exec loxi-demo-a ping -c 2 -W 2 10.244.1.1

step "CHECK pod a against its ADD result (prints nothing when all is as reported)"
/usr/bin/python3 - "$DATA/result-loxi-demo-a" "$(conf)" >"$DATA/check-conf" <<'PY'
import json, sys
conf = json.loads(sys.argv[2]); conf["prevResult"] = json.load(open(sys.argv[1]))
print(json.dumps(conf))
PY
CNI_COMMAND=CHECK CNI_CONTAINERID=demo-loxi-demo-a CNI_NETNS=/var/run/netns/loxi-demo-a \
  CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin "$PLUGIN" <"$DATA/check-conf" && echo "CHECK ok"
step "the same ADD again (a runtime retrying) answers with the first result; nothing new made"
cni ADD loxi-demo-a | head -c 160; echo " ..."
step "another container's eth0 into pod a's netns is refused: the interface exists (code 101)"
CNI_COMMAND=ADD CNI_CONTAINERID=demo-intruder CNI_NETNS=/var/run/netns/loxi-demo-a CNI_IFNAME=eth0 \
  CNI_PATH=/opt/cni/bin:/usr/lib/cni "$PLUGIN" <<<"$(conf)" || true
echo
for pod in "${PODS[@]}"; do
  step "DEL $pod (twice: DEL is idempotent)"
  cni DEL "$pod" && cni DEL "$pod" && echo "ok"
done

step "nothing left behind"
left_veths=$(ip -br link show master "$BRIDGE" | wc -l)
left_ips=$(find "$DATA/loxi-demo" -type f ! -name lock ! -name 'last_reserved_ip.*' | wc -l)
echo "veths on $BRIDGE: $left_veths, address reservations: $left_ips"
"$PLUGIN" status --socket "$LOXI_CNI_SOCKET" | grep -E "attachments|deletions"
[ "$left_veths" -eq 0 ] && [ "$left_ips" -eq 0 ]
step "the design notes' config (vlanID 100) on this kernel"
CNI_COMMAND=ADD CNI_CONTAINERID=demo-vlan CNI_NETNS=/var/run/netns/loxi-demo-a CNI_IFNAME=eth1 \
  CNI_PATH=/opt/cni/bin "$PLUGIN" <<JSON || true
{"cniVersion":"0.2.0","name":"loxilight_cni","type":"loxi-cni","bridge":"hsvlan100",
 "isGateway":true,"isDefaultGateway":false,"mtu":1500,"hairpinMode":false,"promiscMode":false,
 "vlanID":100,"ipam":{"type":"host-local","subnet":"10.244.1.0/24","dataDir":"$DATA",
 "routes":[{"dst":"10.0.0.0/8"}]}}
JSON
echo
step "demo done"
