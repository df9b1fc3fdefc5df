# shellcheck shell=bash
# A real Kubernetes node next to the local control plane, sourced by tests/env/run:
#
#   bridge hfbr0 10.88.0.1/24   the pods' network; nothing forwards or NATs off it (ip_forward stays
#                                as it is, a FORWARD rule drops anything leaving the bridge, pods get
#                                no default route)
#   containerd + runc + CNI      Debian's packages; images come only from tests/env/images.sh (every
#                                pull is sent to a dead local proxy)
#   kubelet, kube-scheduler,     v1.20.2 built by install-k8s.sh; the kubelet serves 10.88.0.1:10250
#   kube-proxy (userspace mode)  with client-certificate + webhook auth, kube-proxy's portals sit on
#                                10.88.0.1 (no routing needed: ClusterIP traffic is delivered locally)
#   dnsmasq on 10.88.0.1:53      cluster DNS stand-in: <svc>.<ns>.svc.cluster.local from a hosts file
#                                the dns-sync loop rewrites from the Services; no upstream at all
#   socat relays on 10.88.0.1    the kube-apiserver (for the `kubernetes` Service), PostgreSQL and
#                                RabbitMQ (AMQPS) of the local environment, which listen on 127.0.0.1
#
# Variables from tests/env/run: STATE, ROOT, HERE, K8S_BIN, KUBE_PORT, PG_PORT, MQ_AMQPS_PORT, SUDO.

NODE_NAME=hyperfleet-node
NODE_BRIDGE=hfbr0
NODE_NET=${HF_NODE_NET:-10.88.0}   # /24; the node is .1, pods get .10 to .250
NODE_IP=$NODE_NET.1
NODE_DIR=$STATE/node
SERVICE_CIDR=10.0.0.0/24
IMAGE_REPO=localhost/hyperfleet-local
CTR_SOCK=$NODE_DIR/run/containerd.sock

node_deps() {
  local need=()
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  [ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v nft >/dev/null || need+=(nftables)
  command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
  command -v socat >/dev/null || need+=(socat)
  [ -x /bin/busybox ] || need+=(busybox-static)
  command -v strip >/dev/null || need+=(binutils)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} (the node)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
}

kctl() { kubectl --kubeconfig "$STATE/k8s/kubeconfig" "$@"; }

# client_cert NAME SUBJECT: a client certificate NAME.crt/.key in .local/k8s signed by the kube CA,
# made again when the CA is newer.
client_cert() {
  local k=$STATE/k8s
  [ -f "$k/$1.crt" ] && [ "$k/$1.crt" -nt "$k/certs.done" ] && return
  (
    cd "$k" || exit 1
    umask 077
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' > "$1.ext"
    openssl x509 -req -sha256 -days 3650 -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
      -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
  )
}

# The kubelet's credential: user system:node:<name> in group system:nodes, so the Node authorizer applies.
node_certs() { client_cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME"; }

# The apiserver's client certificate for the kubelet API (logs, exec, port-forward); k8s_up makes it
# before the apiserver starts.
apiserver_kubelet_cert() { client_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"; }

node_pid() { cat "$NODE_DIR/run/$1.pid" 2>/dev/null; }
node_alive() { pid_alive "$NODE_DIR/run/$1.pid"; }

node_start() { # node_start NAME COMMAND...: a background process with its log in $NODE_DIR/logs
  local name=$1; shift
  node_alive "$name" && return
  setsid "$@" >> "$NODE_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$NODE_DIR/run/$name.pid"
}

node_stop() { stop_pidfile "$NODE_DIR/run/$1.pid" "${2:-20}"; } # node_stop NAME [SECONDS]

# The bridge and its address are machine-wide, so one node runs per machine. /run/hyperfleet-node
# names the state folder whose node owns them; a bridge without a live owner (a node that was killed,
# not stopped) is recreated, which cuts off whatever its old pods left attached.
NODE_OWNER=/run/hyperfleet-node
node_claim() {
  local owner pid
  if [ -f "$NODE_OWNER" ]; then
    read -r owner pid < "$NODE_OWNER" || true
    if [ "$owner" != "$STATE" ] && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      die "the node of another checkout runs on this machine ($owner): run tests/env/run node-down there first"
    fi
    if [ "$owner" != "$STATE" ] || ! node_alive containerd; then bridge_reset; fi
  elif ! node_alive containerd; then
    bridge_reset
  fi
}

# No pod of ours is alive: a fresh bridge, and every address of the pod range free again.
bridge_reset() {
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then $SUDO ip link del "$NODE_BRIDGE"; fi
  rm -rf "$NODE_DIR/cni/ipam"
  mkdir -p "$NODE_DIR/cni/ipam"
}

node_own() { printf '%s %s\n' "$STATE" "$(node_pid containerd)" | $SUDO tee "$NODE_OWNER" >/dev/null; }

node_release() {
  local owner _
  [ -f "$NODE_OWNER" ] && read -r owner _ < "$NODE_OWNER" && [ "$owner" = "$STATE" ] && $SUDO rm -f "$NODE_OWNER"
  return 0
}

NODE_GUARD=HF-NODE-INPUT
bridge_up() {
  # iptables-nft creates its tables on first use; remember which ones we made, to remove only those.
  local t
  for t in filter nat; do
    $SUDO nft list table ip "$t" >/dev/null 2>&1 || touch "$NODE_DIR/run/created-nft-$t"
  done
  local other
  other=$(ip -4 route show to match "$NODE_IP" 2>/dev/null | grep -v "dev $NODE_BRIDGE" | grep -v '^default' || true)
  [ -z "$other" ] || die "$NODE_NET.0/24 is already routed on this machine ($other): pick another /24 with HF_NODE_NET"
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    $SUDO ip link add "$NODE_BRIDGE" type bridge
  fi
  ip -4 addr show dev "$NODE_BRIDGE" | grep -q "inet $NODE_IP/24" || $SUDO ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  $SUDO ip link set "$NODE_BRIDGE" up
  # Nothing that enters from a pod leaves through another interface, whatever ip_forward says.
  $SUDO iptables -C FORWARD -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP 2>/dev/null ||
    $SUDO iptables -I FORWARD -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP
  # The node's address answers this machine (lo) and its pods (the bridge) only, never another interface.
  $SUDO iptables -N "$NODE_GUARD" 2>/dev/null || $SUDO iptables -F "$NODE_GUARD"
  $SUDO iptables -A "$NODE_GUARD" -i lo -j RETURN
  $SUDO iptables -A "$NODE_GUARD" -i "$NODE_BRIDGE" -j RETURN
  $SUDO iptables -A "$NODE_GUARD" -j DROP
  $SUDO iptables -C INPUT -d "$NODE_IP" -j "$NODE_GUARD" 2>/dev/null ||
    $SUDO iptables -I INPUT -d "$NODE_IP" -j "$NODE_GUARD"
}

# The userspace proxier's chains (KUBE-PORTALS-*, KUBE-NODEPORT-*) and the jumps to them; nothing else
# (`kube-proxy --cleanup` would also remove other Kubernetes installations' rules on this machine).
proxy_rules_down() {
  local table chain rule
  for table in nat filter; do
    while read -r rule; do
      # iptables-save quotes the rule's comment for the shell, so it is read back through eval.
      eval "$SUDO iptables -t $table ${rule/#-A /-D }" 2>/dev/null || true
    done < <($SUDO iptables-save -t "$table" 2>/dev/null | grep -E '^-A (PREROUTING|OUTPUT|INPUT) .*-j KUBE-(PORTALS|NODEPORT)-' || true)
    for chain in $($SUDO iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-\(PORTALS\|NODEPORT\)-[A-Z-]*\) .*/\1/p'); do
      $SUDO iptables -t "$table" -F "$chain" 2>/dev/null || true
      $SUDO iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

bridge_down() {
  while $SUDO iptables -D FORWARD -i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -j DROP 2>/dev/null; do :; done
  while $SUDO iptables -D INPUT -d "$NODE_IP" -j "$NODE_GUARD" 2>/dev/null; do :; done
  $SUDO iptables -F "$NODE_GUARD" 2>/dev/null || true
  $SUDO iptables -X "$NODE_GUARD" 2>/dev/null || true
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then $SUDO ip link del "$NODE_BRIDGE"; fi
  # Tables that iptables-nft created for us go once they hold no rule.
  local t
  for t in filter nat; do
    if [ -f "$NODE_DIR/run/created-nft-$t" ] && ! $SUDO iptables-save -t "$t" 2>/dev/null | grep -q '^-A '; then
      $SUDO nft delete table ip "$t" 2>/dev/null || true
    fi
    rm -f "$NODE_DIR/run/created-nft-$t"
  done
  return 0
}

node_config() {
  local d=$NODE_DIR k=$STATE/k8s
  mkdir -p "$d"/{run,logs,cni/net.d,cni/ipam,cni/cache,containerd,kubelet,dns} "$d/logs/pods" "$d/logs/containers"
  cat > "$d/cni/net.d/10-hyperfleet.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "hyperfleet-local",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$d/cni/ipam",
        "ranges": [[{"subnet": "$NODE_NET.0/24", "rangeStart": "$NODE_NET.10", "rangeEnd": "$NODE_NET.250"}]],
        "routes": [{"dst": "$SERVICE_CIDR", "gw": "$NODE_IP"}]
      }
    }
  ]
}
EOF
  cat > "$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$CTR_SOCK"
[ttrpc]
  address = "$d/run/containerd-ttrpc.sock"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$IMAGE_REPO/pause:3.2"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
EOF
  printf 'nameserver %s\n' "$NODE_IP" > "$d/resolv.conf"
  cat > "$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $k/ca.crt}
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
failSwapOn: false
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $d/resolv.conf
makeIPTablesUtilChains: false
serializeImagePulls: false
maxPods: 60
evictionHard: {memory.available: 200Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  (
    umask 077
    cat > "$d/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hyperfleet-local
  cluster: {server: "https://127.0.0.1:$KUBE_PORT", certificate-authority: "$k/ca.crt"}
users:
- name: kubelet
  user: {client-certificate: "$k/kubelet-client.crt", client-key: "$k/kubelet-client.key"}
contexts:
- name: kubelet
  context: {cluster: hyperfleet-local, user: kubelet}
current-context: kubelet
EOF
  )
}

# The kubelet writes to a few fixed paths; point the log ones into our folder.
node_host_paths() {
  local p
  for p in pods containers; do
    if [ ! -e "/var/log/$p" ]; then
      $SUDO ln -s "$NODE_DIR/logs/$p" "/var/log/$p"
    fi
  done
}

node_host_paths_down() {
  local p
  for p in pods containers; do
    [ -L "/var/log/$p" ] && [ "$(readlink "/var/log/$p")" = "$NODE_DIR/logs/$p" ] && $SUDO rm -f "/var/log/$p"
  done
  return 0
}

node_ready() {
  [ "$(kctl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

node_up() {
  local t0; t0=$(now_ms)
  node_deps
  umask 022 # the kubelet writes each pod's /etc/hosts and resolv.conf with the process umask
  node_certs
  node_config
  node_host_paths
  node_claim
  bridge_up
  local d=$NODE_DIR
  if ! node_alive containerd; then
    # Nothing may be pulled from outside: every registry request goes to a port nobody listens on.
    HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY='' \
      node_start containerd containerd --config "$d/containerd.toml"
    wait_for containerd 30 ctr --address "$CTR_SOCK" version || { tail -n 20 "$d/logs/containerd.log" >&2; die "containerd did not start"; }
  fi
  node_own
  images_up
  touch "$d/dns/hosts"
  node_start dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --no-poll --bind-interfaces \
    --listen-address="$NODE_IP" --port=53 --local=/cluster.local/ --addn-hosts="$d/dns/hosts" \
    --user=root --pid-file="" --log-facility=-
  node_start dns-sync bash "$HERE/dns-sync.sh" "$STATE/k8s/kubeconfig" "$d/dns/hosts" "$d/run/dnsmasq.pid"
  # Relays from the node address to what listens on loopback only.
  local r
  for r in "$KUBE_PORT:127.0.0.1:$KUBE_PORT" "$PG_PORT:127.0.0.1:$PG_PORT" "$MQ_AMQPS_PORT:127.0.0.1:$MQ_AMQPS_PORT"; do
    node_start "relay-${r%%:*}" socat "TCP-LISTEN:${r%%:*},bind=$NODE_IP,fork,reuseaddr" "TCP:${r#*:},connect-timeout=5"
  done
  node_start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$STATE/k8s/kubeconfig" \
    --leader-elect=false --port=0 --secure-port=0 --bind-address=127.0.0.1
  node_start kube-proxy "$K8S_BIN/kube-proxy" --kubeconfig="$STATE/k8s/kubeconfig" --proxy-mode=userspace \
    --hostname-override="$NODE_NAME" --bind-address="$NODE_IP" --nodeport-addresses="$NODE_NET.0/24" \
    --cluster-cidr="$NODE_NET.0/24" --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
    --feature-gates=EndpointSliceProxying=false
  node_start kubelet "$K8S_BIN/kubelet" --config="$d/kubelet.yaml" --kubeconfig="$d/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$CTR_SOCK" \
    --root-dir="$d/kubelet" --cert-dir="$d/kubelet/pki" --volume-plugin-dir="$d/kubelet/volume-plugins" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  wait_for "node Ready" 90 node_ready || { tail -n 30 "$d/logs/kubelet.log" >&2; die "the node did not become Ready (log: $d/logs/kubelet.log)"; }
  wait_for "kubernetes Service in DNS" 30 grep -q "kubernetes.default.svc.cluster.local" "$d/dns/hosts" ||
    die "the DNS stand-in has no records (log: $d/logs/dns-sync.log)"
  say "node $NODE_NAME Ready in $(( $(now_ms) - t0 ))ms (pods on $NODE_NET.0/24, DNS and relays on $NODE_IP)"
}

node_down() {
  [ -d "$NODE_DIR/run" ] || return 0
  # Pods of this node go first, while the kubelet can still stop them cleanly.
  if node_alive kubelet && kctl get node "$NODE_NAME" >/dev/null 2>&1; then
    kctl delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --wait=false >/dev/null 2>&1 || true
    wait_for "pods gone" 60 bash -c "[ -z \"\$(kubectl --kubeconfig '$STATE/k8s/kubeconfig' get pods -A --field-selector spec.nodeName=$NODE_NAME -o name 2>/dev/null)\" ]" || true
  fi
  node_stop kubelet 30
  kctl delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  local f
  for f in "$NODE_DIR"/run/*.pid; do
    [ -e "$f" ] || continue
    f=$(basename "$f" .pid)
    [ "$f" = containerd ] || node_stop "$f"
  done
  # Sandboxes the kubelet left (a kill -9) are stopped through containerd, then containerd itself.
  if node_alive containerd; then
    local id
    for id in $(ctr --address "$CTR_SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$CTR_SOCK" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    node_stop containerd 30
  fi
  # Shims (and their containers) that outlived a containerd that crashed.
  local shim
  for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTR_SOCK" 2>/dev/null || true); do
    pkill -KILL -P "$shim" 2>/dev/null || true
    kill -KILL "$shim" 2>/dev/null || true
  done
  # Mounts of the pods' volumes and network namespaces under our folder.
  local m
  for m in $(grep -o " $NODE_DIR/[^ ]*" /proc/self/mounts | sort -r || true); do
    $SUDO umount -l "$m" 2>/dev/null || true
  done
  proxy_rules_down
  # The kubelet's pod cgroups, now empty (rmdir refuses any that still holds a process).
  find /sys/fs/cgroup/*/kubepods* /sys/fs/cgroup/kubepods* -depth -type d -exec rmdir {} + 2>/dev/null || true
  bridge_down
  node_host_paths_down
  node_release
}

node_status() {
  local p
  for p in containerd kubelet kube-scheduler kube-proxy dnsmasq dns-sync; do
    printf '%-22s %s\n' "$p" "$(node_alive "$p" && echo running || echo stopped)"
  done
}
