# shellcheck shell=bash
# Container images for the local node, built without a registry or a daemon and imported into
# containerd's k8s.io namespace (sourced by tests/env/run; uses node.sh's NODE_DIR, CTR_SOCK, IMAGE_REPO
# and run's pg_bin, say, die, now_ms):
#
#   pause:3.2                   the sandbox process, tests/env/pause.c built with gcc -static
#   base:bookworm               what docker/Dockerfile's runtime base (distroless cc-debian12:nonroot) has:
#                               glibc and libgcc from the machine's Debian packages, the CA bundle,
#                               /etc/passwd with nonroot 65532, /tmp; no shell
#   hyperfleet-{api,sentinel,adapter}:dev
#                               base + the binary (stripped) from HF_IMAGE_BIN_DIR (default target/debug),
#                               with the Dockerfile's USER, ENTRYPOINT, CMD and EXPOSE
#   postgres:local              the machine's PostgreSQL (15 on bookworm) + busybox, uid 70;
#                               POSTGRES_USER/PASSWORD/DB as the official image reads them
#   rabbitmq:local              the machine's RabbitMQ (3.10) + Erlang + busybox, uid 100 gid 101;
#                               RABBITMQ_DEFAULT_USER/PASS
#
# Each image is rebuilt and re-imported only when what goes into it changed (a key per image in
# $NODE_DIR/images/keys).

IMAGE_TAG=dev

ctr_k8s() { ctr --address "$CTR_SOCK" -n k8s.io "$@"; }

# image_fresh NAME KEY: whether NAME was imported from inputs with this KEY and is still in containerd.
image_fresh() {
  [ "$(cat "$NODE_DIR/images/keys/$1" 2>/dev/null)" = "$2" ] && ctr_k8s images ls -q | grep -x "$IMAGE_REPO/$1" >/dev/null
}

image_import() { # image_import NAME KEY ARCHIVE
  ctr_k8s images import "$3" >/dev/null || die "ctr images import $3 failed"
  printf '%s' "$2" > "$NODE_DIR/images/keys/$1"
  rm -f "$3"
}

mkimage() { python3 "$HERE/mkimage.py" "$@"; }

# copy_host ROOTFS PATH...: copies host files (symlinks resolved) to the same paths under ROOTFS,
# leaving alone any path that is already there (it may be a symlink pointing outside ROOTFS).
copy_host() {
  local root=$1; shift
  local f
  for f in "$@"; do
    [ -e "$root$f" ] || [ -L "$root$f" ] && continue
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
  done
}

# The shared libraries the given executables and libraries load, as host paths.
ldd_closure() {
  ldd "$@" 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^\s*\(\/[^ ]*\) (0x.*/\1/p' | sort -u
}

passwd_files() { # passwd_files ROOTFS [EXTRA_PASSWD_LINE [EXTRA_GROUP_LINE]]
  mkdir -p "$1/etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n%s' "${2:+$2
}" > "$1/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n%s' "${3:+$3
}" > "$1/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$1/etc/nsswitch.conf"
}

# A directory tree like distroless cc-debian12:nonroot, from the machine's Debian packages.
base_rootfs() {
  local r=$1 f
  rm -rf "$r" && mkdir -p "$r"/{tmp,home/nonroot,etc/ssl/certs,usr/local/bin}
  chmod 1777 "$r/tmp"
  dpkg -L libc6 libgcc-s1 | grep -E '^/(usr/)?lib(64)?/.*\.so' | while read -r f; do
    if [ -L "$f" ]; then
      mkdir -p "$r$(dirname "$f")" && cp -P "$f" "$r$f"
    elif [ -f "$f" ]; then
      mkdir -p "$r$(dirname "$f")" && cp "$f" "$r$f"
    fi
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
  passwd_files "$r"
}

busybox_rootfs() { # busybox in /bin with its applets, for the dependency images' entrypoints
  local r=$1 a
  mkdir -p "$r/bin"
  cp /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"
  done
}

images_up() {
  local d=$NODE_DIR/images t0 built=()
  t0=$(now_ms)
  mkdir -p "$d/keys" "$d/work"
  command -v gcc >/dev/null || die "gcc is needed for the pause image"

  # pause
  local key
  key=$(sha256sum "$HERE/pause.c" "$HERE/mkimage.py" | sha256sum | cut -c1-16)
  if ! image_fresh pause:3.2 "$key"; then
    rm -rf "$d/work/pause" && mkdir -p "$d/work/pause"
    gcc -static -Os -o "$d/work/pause/pause" "$HERE/pause.c" || die "cannot build pause.c (libc6-dev installed?)"
    strip "$d/work/pause/pause"
    mkimage "$d/work/pause.tar" --tag "$IMAGE_REPO/pause:3.2" --layer "$d/work/pause" --user 65535:65535 --entrypoint '["/pause"]'
    image_import pause:3.2 "$key" "$d/work/pause.tar"; built+=(pause)
  fi

  # base + the three services
  local base_key
  base_key=$(dpkg-query -W -f '${Version}' libc6 libgcc-s1; sha256sum /etc/ssl/certs/ca-certificates.crt "$HERE/images.sh" "$HERE/mkimage.py")
  base_key=$(printf '%s' "$base_key" | sha256sum | cut -c1-16)
  if [ "$(cat "$d/work/base.key" 2>/dev/null)" != "$base_key" ]; then
    base_rootfs "$d/work/base"
    printf '%s' "$base_key" > "$d/work/base.key"
  fi
  # The base alone, for docker/Dockerfile's RUNTIME_BASE where distroless cannot be pulled.
  if ! image_fresh base:bookworm "$base_key"; then
    mkimage "$d/work/base.tar" --tag "$IMAGE_REPO/base:bookworm" --layer "$d/work/base" --user 65532:65532 \
      --chown /home/nonroot=65532:65532
    image_import base:bookworm "$base_key" "$d/work/base.tar"; built+=(base)
  fi
  local bin_dir=${HF_IMAGE_BIN_DIR:-$ROOT/target/debug} svc bin cmd expose
  for svc in api sentinel adapter; do
    bin=$bin_dir/hyperfleet-$svc
    [ -x "$bin" ] || die "$bin not found: cargo build --workspace --bins first (or set HF_IMAGE_BIN_DIR)"
    key=$(printf '%s %s' "$base_key" "$(stat -c '%s %Y' "$bin")" | sha256sum | cut -c1-16)
    image_fresh "hyperfleet-$svc:$IMAGE_TAG" "$key" && continue
    rm -rf "$d/work/$svc" && mkdir -p "$d/work/$svc/usr/local/bin"
    strip --strip-debug -o "$d/work/$svc/usr/local/bin/hyperfleet-$svc" "$bin"
    cmd=null expose=(--expose 8080 --expose 9090)
    if [ "$svc" = api ]; then cmd='["serve"]'; expose+=(--expose 8000); fi
    mkimage "$d/work/$svc.tar" --tag "$IMAGE_REPO/hyperfleet-$svc:$IMAGE_TAG" --layer "$d/work/base" \
      --layer "$d/work/$svc" --user 65532:65532 --entrypoint "[\"/usr/local/bin/hyperfleet-$svc\"]" --cmd "$cmd" \
      "${expose[@]}" --chown /home/nonroot=65532:65532
    image_import "hyperfleet-$svc:$IMAGE_TAG" "$key" "$d/work/$svc.tar"; built+=("$svc")
  done

  # PostgreSQL
  local pg pgver
  pg=$(dirname "$(pg_bin)"); pgver=${pg##*/}
  key=$(printf '%s %s' "$(dpkg-query -W -f '${Version}' "postgresql-$pgver" busybox-static)" "$(sha256sum "$HERE/images.sh")" | sha256sum | cut -c1-16)
  if ! image_fresh postgres:local "$key"; then
    local r=$d/work/postgres
    base_rootfs "$r"
    mkdir -p "$r"/{var/lib/postgresql,var/run/postgresql,usr/share,usr/local/bin}
    passwd_files "$r" 'postgres:x:70:70:postgres:/var/lib/postgresql:/bin/sh' 'postgres:x:70:'
    busybox_rootfs "$r"
    mkdir -p "$r/usr/lib/postgresql" "$r/usr/share/postgresql"
    cp -a "$pg" "$r/usr/lib/postgresql/"
    cp -a "/usr/share/postgresql/$pgver" "$r/usr/share/postgresql/"
    cp -a /usr/share/zoneinfo "$r/usr/share/"
    # shellcheck disable=SC2046
    copy_host "$r" $(ldd_closure "$pg"/bin/* "$pg"/lib/*.so)
    cat > "$r/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Stands in for the official image's entrypoint: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}" "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "POSTGRES_PASSWORD is required" >&2; exit 1; }
  mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
  rm -f "$pw"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    postgres --single -D "$PGDATA" postgres <<SQL >/dev/null
CREATE DATABASE "$POSTGRES_DB" OWNER "$POSTGRES_USER";
SQL
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
EOF
    chmod 755 "$r/usr/local/bin/docker-entrypoint.sh"
    mkimage "$d/work/postgres.tar" --tag "$IMAGE_REPO/postgres:local" --layer "$r" --user 70:70 \
      --entrypoint '["/usr/local/bin/docker-entrypoint.sh"]' --expose 5432 \
      --env "PATH=$pg/bin:/usr/local/bin:/usr/bin:/bin" --env TZ=UTC \
      --chown /var/lib/postgresql=70:70 --chown /var/run/postgresql=70:70
    image_import postgres:local "$key" "$d/work/postgres.tar"; built+=(postgres)
  fi

  # RabbitMQ
  local erts
  key=$(printf '%s %s' "$(dpkg-query -W -f '${Version}' rabbitmq-server erlang-base busybox-static)" "$(sha256sum "$HERE/images.sh")" | sha256sum | cut -c1-16)
  if ! image_fresh rabbitmq:local "$key"; then
    local r=$d/work/rabbitmq
    base_rootfs "$r"
    mkdir -p "$r"/{var/lib/rabbitmq,usr/lib,usr/local/bin}
    passwd_files "$r" 'rabbitmq:x:100:101:rabbitmq:/var/lib/rabbitmq:/bin/sh' 'rabbitmq:x:101:'
    busybox_rootfs "$r"
    cp -a /usr/lib/erlang /usr/lib/rabbitmq "$r/usr/lib/"
    erts=$(ls -d /usr/lib/erlang/erts-*)
    # shellcheck disable=SC2046
    copy_host "$r" $(ldd_closure "$erts"/bin/* /usr/lib/erlang/lib/*/priv/lib/*.so)
    cat > "$r/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Stands in for the official image's entrypoint: RABBITMQ_DEFAULT_USER and RABBITMQ_DEFAULT_PASS.
set -eu
base=/var/lib/rabbitmq
export HOME=$base RABBITMQ_MNESIA_BASE=$base/mnesia RABBITMQ_LOG_BASE=$base/log \
  RABBITMQ_CONFIG_FILE=$base/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins \
  RABBITMQ_ADVANCED_CONFIG_FILE=$base/advanced.config
mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
umask 077
cat > "$RABBITMQ_CONFIG_FILE" <<CONF
listeners.tcp.default = 5672
loopback_users = none
default_user = ${RABBITMQ_DEFAULT_USER:-guest}
default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}
log.console = true
log.file = false
CONF
echo '[].' > "$RABBITMQ_ENABLED_PLUGINS_FILE"
echo '[].' > "$RABBITMQ_ADVANCED_CONFIG_FILE"
exec /usr/lib/rabbitmq/bin/rabbitmq-server
EOF
    chmod 755 "$r/usr/local/bin/docker-entrypoint.sh"
    mkimage "$d/work/rabbitmq.tar" --tag "$IMAGE_REPO/rabbitmq:local" --layer "$r" --user 100:101 \
      --entrypoint '["/usr/local/bin/docker-entrypoint.sh"]' --expose 5672 \
      --env "PATH=/usr/lib/erlang/bin:/usr/lib/rabbitmq/bin:/usr/local/bin:/usr/bin:/bin" \
      --chown /var/lib/rabbitmq=100:101
    image_import rabbitmq:local "$key" "$d/work/rabbitmq.tar"; built+=(rabbitmq)
  fi
  if [ ${#built[@]} -gt 0 ]; then
    say "images built and imported (${built[*]}) in $(( $(now_ms) - t0 ))ms"
  fi
}
