#!/usr/bin/env bash
# Builds the image and runs it for real: /readyz turns 200, /detect finds the face on a real cat
# photo, the process runs as non-root, HEALTHCHECK reports healthy, and SIGTERM drains and exits 0
# within the grace period. Prints the image size.
#
# Needs a Docker engine. If none answers, it installs Debian's docker.io and starts its own dockerd
# (no iptables, no bridge: the build and the container use the host network; own data root,
# exec root, socket and pidfile), stopped by PID on exit. No registry is reachable here, so a
# missing python:3.11-slim-bookworm is made by debootstrapping bookworm from this machine's apt
# source. Exits 0 with "SKIPPED" where no engine can be had; any other problem fails.
#
# Settings: CATFACE_DATA (photos, default ../shared/data), CATFACE_SMOKE_PHOTO,
# CATFACE_SMOKE_STATE (engine data root and cache, default /var/lib/catface-smoke).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=${CATFACE_DATA:-$REPO/../shared/data}
PHOTO=${CATFACE_SMOKE_PHOTO:-$DATA/crawford/CAT_01/00000102_003.jpg}
STATE=${CATFACE_SMOKE_STATE:-/var/lib/catface-smoke}
RUN_DIR=/run/catface-smoke            # exec root and socket: unix socket paths must stay short
BASE=python:3.11-slim-bookworm
IMAGE=catface:smoke
NAME=catface-smoke-$$
GRACE=30                              # = compose stop_grace_period; k8s allows 40 incl. preStop
DRAIN=3                               # CATFACE_DRAIN_S in the test: /readyz must say 503 meanwhile
DOCKER=/usr/bin/docker                # docker.io's client has BuildKit; /usr/local/bin/docker lacks buildx
# The memory limit we ship (compose's mem_limit; docker/k8s says the same, checked by validate.sh).
MEMORY=$(sed -n 's/^ *mem_limit: *\([^ #]*\).*/\1/p' "$REPO/docker/compose.yaml")
TMPFS=$(sed -n 's/^ *- \/tmp:\(.*\)$/\1/p' "$REPO/docker/compose.yaml")
started=$(date +%s)
dockerd_pid=""
outcome=failed
work=$(mktemp -d)

say() { echo "docker smoke: $*"; }
skip() { say "SKIPPED: $*"; outcome=skipped; exit 0; }
fail() { say "FAILED: $*" >&2; exit 1; }

cleanup() {
    local rc=$?
    if [ -n "${container:-}" ]; then
        "$DOCKER" rm -f "$container" >/dev/null 2>&1 || true
    fi
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        kill -TERM "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$dockerd_pid" 2>/dev/null; then
            say "dockerd did not stop in 30 s; killing it"
            kill -KILL "$dockerd_pid" 2>/dev/null || true
        fi
        # dockerd leaves its netns and a bind mount of its data root mounted; nothing else uses them.
        umount "$RUN_DIR/exec/netns/default" 2>/dev/null || true
        umount "$STATE/docker" 2>/dev/null || true
        say "stopped dockerd (pid $dockerd_pid)"
    fi
    rm -rf "$work"
    # Last, in the form CI reads as a test count (a skip prints none: nothing was tested).
    if [ "$outcome" = passed ]; then echo "smoke: 1 passed, 0 failed"
    elif [ "$outcome" != skipped ]; then echo "smoke: 0 passed, 1 failed"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -f "$PHOTO" ] || fail "no cat photo at $PHOTO (set CATFACE_DATA or CATFACE_SMOKE_PHOTO)"
root=0; [ "$(id -u)" = 0 ] && root=1

# ---- an engine ---------------------------------------------------------------------------------
install_packages() {  # Debian packages, only when missing
    local missing=()
    for pair in "$@"; do
        [ -x "${pair%%:*}" ] || [[ " ${missing[*]} " == *" ${pair#*:} "* ]] || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} = 0 ] && return 0
    [ "$root" = 1 ] && command -v apt-get >/dev/null || return 1
    say "installing ${missing[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
        >"$work/apt.log" 2>&1; then
        tail -5 "$work/apt.log"
        return 1
    fi
}

engine_answers() { timeout 20 "$DOCKER" version >/dev/null 2>&1; }

pidfile=$RUN_DIR/dockerd.pid
if [ -x "$DOCKER" ] && engine_answers; then
    say "using the running engine ($("$DOCKER" version -f '{{.Server.Version}}'))"
elif [ -x "$DOCKER" ] && [ -S "$RUN_DIR/docker.sock" ] && DOCKER_HOST=unix://$RUN_DIR/docker.sock engine_answers; then
    # Left by an interrupted run of this script: used, and left running, as it is not ours to stop.
    export DOCKER_HOST=unix://$RUN_DIR/docker.sock
    say "using the dockerd an earlier run left running (pid $(cat "$pidfile" 2>/dev/null || echo '?'))"
else
    install_packages /usr/bin/docker:docker.io /usr/sbin/dockerd:docker.io \
        || skip "no Docker engine runs and docker.io cannot be installed here (needs root and apt)"
    [ "$root" = 1 ] || skip "no Docker engine runs, and starting dockerd needs root"
    mkdir -p "$STATE/docker" "$RUN_DIR"
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then rm -f "$pidfile"; fi
    say "starting dockerd (data root $STATE/docker)"
    dockerd --data-root "$STATE/docker" --exec-root "$RUN_DIR/exec" --pidfile "$pidfile" \
        --host "unix://$RUN_DIR/docker.sock" --iptables=false --ip-masq=false --bridge=none \
        >"$STATE/dockerd.log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST=unix://$RUN_DIR/docker.sock
    for _ in $(seq 60); do
        kill -0 "$dockerd_pid" 2>/dev/null || break
        engine_answers && break
        sleep 1
    done
    if ! kill -0 "$dockerd_pid" 2>/dev/null || ! engine_answers; then
        tail -15 "$STATE/dockerd.log" | sed 's/^/  dockerd: /'
        skip "dockerd could not be started here (log: $STATE/dockerd.log)"
    fi
    say "dockerd $("$DOCKER" version -f '{{.Server.Version}}') runs as pid $dockerd_pid, storage $("$DOCKER" info -f '{{.Driver}}')"
fi

# ---- the base image ----------------------------------------------------------------------------
# The Debian mirror this machine's apt uses for bookworm (deb822 .sources or sources.list).
apt_mirror() {
    python3 - <<'EOF'
import glob, re
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
        if "deb" in fields.get("Types", "").split() and "bookworm" in fields.get("Suites", "").split():
            print(fields["URIs"].split()[0]); raise SystemExit
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try: lines = open(path).read().splitlines()
    except OSError: continue
    for line in lines:
        m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", line + " ")
        if m: print(m.group(1)); raise SystemExit
print("http://deb.debian.org/debian")
EOF
}

make_base() {
    [ "$root" = 1 ] || skip "$BASE is missing and debootstrap needs root"
    install_packages /usr/sbin/debootstrap:debootstrap || fail "cannot install debootstrap"
    local mirror rootfs=$STATE/rootfs
    mirror=$(apt_mirror)
    say "making $BASE: debootstrap bookworm from $mirror"
    rm -rf "$rootfs"
    timeout 1200 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase \
        bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log"; fail "debootstrap failed"; }
    # A venv at /usr/local gives /usr/local/bin/python and pip, as in the official image.
    chroot "$rootfs" /usr/bin/python3 -m venv /usr/local || fail "python3 -m venv /usr/local failed"
    chroot "$rootfs" /usr/local/bin/python --version >/dev/null
    chroot "$rootfs" /usr/local/bin/pip --version >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" --numeric-owner -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --change 'LABEL org.catface.base="debootstrap stand-in for the official image"' \
        - "$BASE" >/dev/null
    rm -rf "$rootfs"
}

if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    say "base image $BASE is present"
else
    t=$(date +%s); make_base; say "made $BASE in $(( $(date +%s) - t )) s"
fi

# ---- build -------------------------------------------------------------------------------------
secret=()
for ca in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    if [ -n "$ca" ] && [ -s "$ca" ]; then secret=(--secret "id=ca_bundle,src=$ca"); break; fi
done
say "building $IMAGE (BuildKit, host network)"
t=$(date +%s)
DOCKER_BUILDKIT=1 timeout 1800 "$DOCKER" build --progress=plain --network=host "${secret[@]}" \
    -f "$REPO/docker/Dockerfile" -t "$IMAGE" "$REPO" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; fail "docker build failed"; }
say "built in $(( $(date +%s) - t )) s"
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
size_mb=$(( size / 1000000 ))
user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
case "${user%%:*}" in ""|0|root) fail "the image runs as root (USER '$user')" ;; esac

# ---- run ---------------------------------------------------------------------------------------
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
container=$NAME
"$DOCKER" run -d --name "$NAME" --network host --read-only --tmpfs "/tmp:rw,$TMPFS" \
    --cap-drop ALL --security-opt no-new-privileges --cpus 1 --memory "$MEMORY" \
    -e CATFACE_HOST=127.0.0.1 -e CATFACE_PORT="$port" -e CATFACE_DRAIN_S="$DRAIN" "$IMAGE" >/dev/null

show_logs() { "$DOCKER" logs --tail 30 "$container" 2>&1 | sed 's/^/  container: /'; }
running() { [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$container")" = true ]; }
status_of() { curl -s -o "$work/body" -w '%{http_code}' --max-time 10 "$@" || true; }

t=$(date +%s)
until [ "$(status_of "$url/readyz")" = 200 ]; do
    running || { show_logs; fail "the container exited before it was ready"; }
    [ $(( $(date +%s) - t )) -lt 180 ] || { show_logs; fail "/readyz not 200 after 180 s"; }
    sleep 1
done
say "/readyz is 200 after $(( $(date +%s) - t )) s"
# (logs to a file first: `docker logs | grep -q` fails under pipefail when grep quits early)
"$DOCKER" logs "$container" >"$work/logs" 2>&1 || true
grep -q '"cpus": 1,' "$work/logs" \
    || { show_logs; fail "the entry helper did not size threads from the --cpus 1 quota"; }
uid=$("$DOCKER" exec "$container" python -c 'import os; print(os.getuid())')
[ "$uid" != 0 ] || fail "the service runs as root"

faces() {  # /detect on the photo; prints the number of faces, fails unless 200
    local code
    code=$(status_of -F "image=@$PHOTO" "$url/detect")
    [ "$code" = 200 ] || { cat "$work/body"; echo; show_logs; fail "/detect answered $code"; }
    python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["faces"]))' "$work/body"
}
n=$(faces)
[ "$n" -ge 1 ] || fail "/detect found no face on $PHOTO"
say "/detect found $n face(s) on $(basename "$PHOTO"), as uid $uid"

t=$(date +%s)
until [ "$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$container")" = healthy ]; do
    [ $(( $(date +%s) - t )) -lt 60 ] || { show_logs; fail "HEALTHCHECK not healthy after 60 s"; }
    sleep 2
done
say "HEALTHCHECK reports healthy"

# ---- a burst at the shipped memory limit --------------------------------------------------------
# 64 concurrent /detect: each is answered 200 or refused 503 (admission), and the container is
# neither OOM-killed nor restarted.
seq 64 | xargs -P 64 -I{} curl -s -o /dev/null -w '%{http_code}\n' --max-time 90 -F "image=@$PHOTO" "$url/detect" \
    >"$work/burst" || true
running || { show_logs; fail "the container died in a burst of 64 /detect (OOMKilled: $("$DOCKER" inspect -f '{{.State.OOMKilled}}' "$container"))"; }
[ "$("$DOCKER" inspect -f '{{.State.OOMKilled}}' "$container")" = false ] || fail "OOM-killed in the burst"
ok=$(grep -c '^200$' "$work/burst" || true)
other=$(grep -v -c -E '^(200|503)$' "$work/burst" || true)
[ "$ok" -ge 1 ] && [ "$other" = 0 ] || { sort "$work/burst" | uniq -c; fail "burst answers other than 200/503"; }
peak=$("$DOCKER" exec "$container" cat /sys/fs/cgroup/memory.peak 2>/dev/null || echo unknown)
say "burst of 64 at --memory $MEMORY: $ok answered 200, the rest 503; no OOM kill (cgroup peak: $peak bytes)"

# ---- graceful stop -----------------------------------------------------------------------------
# A request in flight when SIGTERM arrives must still be answered; then exit 0 within the grace.
( curl -s -o "$work/inflight" -w '%{http_code}' --max-time 30 -F "image=@$PHOTO" "$url/detect" \
    >"$work/inflight.code" || true ) &
inflight_pid=$!
sleep 0.2
t=$(date +%s)
"$DOCKER" kill --signal TERM "$container" >/dev/null
sleep 0.5
draining=$(status_of "$url/readyz")
code=$(timeout $(( GRACE + 5 )) "$DOCKER" wait "$container" || echo timeout)
took=$(( $(date +%s) - t ))
wait "$inflight_pid" || true
[ "$code" != timeout ] || { show_logs; fail "still running $GRACE s after SIGTERM"; }
[ "$took" -le "$GRACE" ] || fail "SIGTERM took $took s, more than the $GRACE s grace period"
[ "$code" = 0 ] || { show_logs; fail "exit code $code after SIGTERM (want 0)"; }
[ "$draining" = 503 ] || fail "/readyz answered $draining while draining (want 503)"
[ "$(cat "$work/inflight.code")" = 200 ] || fail "the request in flight at SIGTERM got $(cat "$work/inflight.code")"
say "SIGTERM: /readyz 503 while draining, the request in flight answered, exit 0 after $took s"

say "image $IMAGE: $size_mb MB ($size bytes), user $user"
[ "$size_mb" -lt 400 ] || say "WARNING: the image is over the 400 MB target"
say "passed in $(( $(date +%s) - started )) s"
outcome=passed
