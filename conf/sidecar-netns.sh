#!/bin/sh
# The sidecar deployment, shown with network namespaces instead of a
# container runtime (run as root):
#   - a "pod" namespace: the application listens on the pod's loopback only
#     (127.0.0.1:8081); finguard listens on the pod's interface (10.200.0.1:8080)
#     and forwards to the application over loopback, as a sidecar does;
#   - a "client" namespace (10.200.0.2) from which the buggy clients come.
# Every simulator scenario is run against the pod's address; afterwards the
# application's own sockets are counted: none left in CLOSE_WAIT or
# FIN_WAIT2, and few connections ever opened to it.
#
#   conf/sidecar-netns.sh [path/to/finguard]
set -eu
bin=${1:-target/release/finguard}
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
pod=fg-pod-$$ client=fg-client-$$
work=$(mktemp -d)
cleanup() {
    ip netns pids "$pod" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$pod" 2>/dev/null || true
    ip netns del "$client" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip netns add "$pod"
ip netns add "$client"
ip link add fgp$$ type veth peer name fgc$$
ip link set fgp$$ netns "$pod"
ip link set fgc$$ netns "$client"
ip -n "$pod" addr add 10.200.0.1/24 dev fgp$$
ip -n "$client" addr add 10.200.0.2/24 dev fgc$$
for ns in "$pod" "$client"; do ip -n "$ns" link set lo up; done
ip -n "$pod" link set fgp$$ up
ip -n "$client" link set fgc$$ up

# The application: Python's threaded HTTP/1.1 file server, on the pod's
# loopback only (with a real accept backlog: the module's default of 5
# resets clients under this load before finguard is even involved).
mkdir -p "$work/www" && echo hello >"$work/www/index.html"
ip netns exec "$pod" python3 -c '
import functools, http.server, sys
http.server.ThreadingHTTPServer.request_queue_size = 1024
http.server.SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
http.server.ThreadingHTTPServer(("127.0.0.1", 8081), handler).serve_forever()
' "$work/www" >"$work/app.log" 2>&1 &
# finguard, the sidecar, on the pod's interface.
ip netns exec "$pod" env FINGUARD_LISTEN=10.200.0.1:8080 FINGUARD_BACKEND=127.0.0.1:8081 \
    FINGUARD_ADMIN=127.0.0.1:9901 "$bin" run -c conf/sidecar.toml >"$work/access.log" 2>"$work/finguard.log" &
i=0
until ip netns exec "$client" curl -sf -o /dev/null http://10.200.0.1:8080/; do
    i=$((i + 1)); [ $i -lt 50 ] || { cat "$work/finguard.log" >&2; exit 1; }; sleep 0.1
done

echo "from the client namespace:"
echo "  through finguard (10.200.0.1:8080): $(ip netns exec "$client" curl -s http://10.200.0.1:8080/)"
if ip netns exec "$client" curl -s -m 2 -o /dev/null http://10.200.0.1:8081/; then
    echo "  the application is reachable from outside the pod: not a sidecar setup" >&2; exit 1
fi
echo "  the application itself (10.200.0.1:8081): unreachable, as it should be"

for s in well-behaved never-close half-close post-unauthorized pipeline-error slowloris idle-hold; do
    ip netns exec "$client" "$bin" simulate --target 10.200.0.1:8080 --scenario "$s" \
        --connections 50 --duration 1s --json >"$work/$s.json"
    echo "  scenario $s: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(", ".join(f"{k}={v}" for k,v in r.items() if not isinstance(v,(dict,list))))' "$work/$s.json")"
done

# The application's side of things, counted inside the pod.
sleep 1
census=$(ip netns exec "$pod" "$bin" census --port 8081 --json)
echo "inside the pod, the application's port 8081: $census"
python3 - "$census" <<'PY'
import json, sys
c = json.loads(sys.argv[1])
states = c.get("states", c) if isinstance(c, dict) else {}
flat = json.dumps(c)
bad = {k: v for k, v in (states.items() if isinstance(states, dict) else []) if k in ("CLOSE_WAIT", "FIN_WAIT2", "FIN_WAIT_2") and v}
if bad:
    sys.exit(f"the application was left with {bad}")
print("the application is untouched: no CLOSE_WAIT, no FIN_WAIT2")
PY
