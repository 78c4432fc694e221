#!/usr/bin/env bash
# Two Ray nodes on one machine, each in a network namespace of its own, and `indexer index` (then
# `indexer materialize`) run on them with --engine ray: the summaries' tasks_by_node name both
# hosts. Not part of the test suite; needs root (ip netns) and the repo's venv with indexer[ray].
#
#     sudo scripts/ray_two_nodes.sh [N_SAMPLES]        # default 20000
#
# Network: two namespaces made here (A and B) joined by a veth pair created inside them,
# 10.231.0.1/24 in A and 10.231.0.2/24 in B, no route anywhere else: Ray's head and the driver run
# in A, the second node in B, so no packet touches the machine's own interfaces (Ray 2.60 binds a
# node's non-loopback address, which inside a namespace is its veth address). Both nodes see the
# same paths: it is one filesystem. Everything started here is stopped by process id (the
# processes in the two namespaces) and the namespaces and files are removed on any exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${VENV:-$HERE/.venv}/bin
N=${1:-20000}
TAG=idxray$$
NS_A=$TAG-a
NS_B=$TAG-b
ADDR_A=10.231.0.1
ADDR_B=10.231.0.2
PORT=6379
WORK=$(mktemp -d /tmp/r2n.XXXXXX)   # short: Ray's socket paths live under it
STORE=$((256 * 1024 * 1024))         # object store a node (bytes); Ray's default is 30% of memory

in_ns() {  # in_ns NAMESPACE COMMAND...: run inside the namespace, Ray on its veth address, with
    # this cluster's own token (Ray 2.60's token authentication), never one from ~/.ray
    local ns=$1
    shift
    ip netns exec "$ns" env -u RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER -u RAY_ADDRESS -u RAY_AUTH_TOKEN \
        RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$WORK/auth_token" RAY_USAGE_STATS_ENABLED=0 \
        PATH="$BIN:$PATH" "$@"
}

stop_namespace() {  # every process inside it (ours: the namespace was made here), then it
    local ns=$1 pids
    ip netns list | grep -qw "$ns" || return 0
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
        kill -TERM $pids 2>/dev/null || true
        for _ in $(seq 50); do
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [ -z "$pids" ] && break
            sleep 0.1
        done
        [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns"
}

cleanup() {
    set +e
    stop_namespace "$NS_B"
    stop_namespace "$NS_A"
    rm -rf "$WORK"
    echo "torn down: namespaces $NS_A and $NS_B, $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== network: $NS_A ($ADDR_A) <-veth-> $NS_B ($ADDR_B), nothing else"
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "${TAG}a" netns "$NS_A" type veth peer name "${TAG}b" netns "$NS_B"
ip -n "$NS_A" addr add "$ADDR_A/24" dev "${TAG}a"
ip -n "$NS_B" addr add "$ADDR_B/24" dev "${TAG}b"
for ns in "$NS_A" "$NS_B"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_A" link set "${TAG}a" up
ip -n "$NS_B" link set "${TAG}b" up
ip -n "$NS_A" route
ip -n "$NS_B" route
in_ns "$NS_A" python -c "
import socket
try:
    socket.create_connection(('$ADDR_B', 9), 2)
except ConnectionRefusedError:
    print('$ADDR_A reaches $ADDR_B (a closed port answered)')"

echo "== data: $N samples (scripts/make_sample.py), and the same files packed into 8 tar shards"
"$BIN/python" "$HERE/scripts/make_sample.py" "$WORK/data" --n "$N" --subfolders 8 >/dev/null
"$BIN/python" - "$WORK/data" "$WORK/shards" <<'EOF'
# make_sample's md5_file_hash is the key's md5; in the shards it is the image's, as in DALLE-3
# (materialize checks it and would refuse every image)
import hashlib, io, json, sys, tarfile
from pathlib import Path
data, shards = Path(sys.argv[1]), Path(sys.argv[2])
shards.mkdir()

def member(path: Path) -> bytes:
    raw = path.read_bytes()
    images = [path.with_suffix(ext) for ext in (".png", ".jpg", ".jpeg") if path.with_suffix(ext).exists()]
    if path.suffix != ".json" or not images:
        return raw
    try:
        fields = json.loads(raw)
    except ValueError:
        return raw  # a faulty JSON stays faulty
    if not isinstance(fields, dict):
        return raw
    fields["md5_file_hash"] = hashlib.md5(images[0].read_bytes()).hexdigest()
    return json.dumps(fields).encode()

for number, folder in enumerate(sorted(p for p in data.iterdir() if p.is_dir())):
    with tarfile.open(shards / f"s{number}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                body = member(path)
                info = tarfile.TarInfo(path.relative_to(data).as_posix())
                info.size, info.mtime = len(body), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(body))
EOF

(umask 077 && "$BIN/python" -c "import secrets; print(secrets.token_hex(32), end='')" >"$WORK/auth_token")
echo "== ray: head in $NS_A, a second node in $NS_B (1 CPU each)"
in_ns "$NS_A" ray start --head --node-ip-address="$ADDR_A" --port="$PORT" --num-cpus=1 \
    --object-store-memory="$STORE" --include-dashboard=false --disable-usage-stats \
    --temp-dir="$WORK/ray-a" >"$WORK/head.log" 2>&1 || { cat "$WORK/head.log"; exit 1; }
in_ns "$NS_B" ray start --address="$ADDR_A:$PORT" --node-ip-address="$ADDR_B" --num-cpus=1 \
    --object-store-memory="$STORE" --disable-usage-stats \
    --temp-dir="$WORK/ray-b" >"$WORK/node.log" 2>&1 || { cat "$WORK/node.log"; exit 1; }
in_ns "$NS_A" python -c "
import ray
ray.init(address='$ADDR_A:$PORT', log_to_driver=False, configure_logging=False)
print('nodes:', sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))"

show() {  # the summary's engine figures, from --json on stdin
    "$BIN/python" -c "
import json, sys
s = json.load(sys.stdin)
keep = ('samples', 'added', 'fetched', 'failed_count', 'seconds', 'readers', 'engine', 'tasks_by_node',
        'task_retries', 'tasks_failed', 'writer_busy')
print(json.dumps({k: s[k] for k in keep if k in s}))"
}

echo "== indexer index $WORK/data --engine ray --ray-address $ADDR_A:$PORT (driver in $NS_A)"
in_ns "$NS_A" indexer index "$WORK/data" --db "$WORK/index.sqlite" --engine ray \
    --ray-address "$ADDR_A:$PORT" --json | show
echo "== indexer index $WORK/shards (tar shards in place), same cluster"
in_ns "$NS_A" indexer index "$WORK/shards" --db "$WORK/index.sqlite" --engine ray \
    --ray-address "$ADDR_A:$PORT" --json | show
echo "== indexer materialize $WORK/subset --where 'width >= 1024' from the shards, same cluster"
in_ns "$NS_A" indexer materialize "$WORK/subset" --db "$WORK/index.sqlite" --id shards \
    --where "width >= 1024" --engine ray --ray-address "$ADDR_A:$PORT" --json | show || true
