#!/bin/bash
# Containers: `make image`, then deploy/docker-compose.yml as an operator runs
# it (docker-compose v1; the file is v2-compatible), with the test model and
# the ports published on 127.0.0.1:
#   1. up with 2 prefill + 2 decode: workers find the router by service name,
#      each decode worker announces its container's address (not 0.0.0.0),
#      every container turns healthy, /health answers 200 on the published
#      port; 20 requests from pd-cli on the host are token-identical to pd-run;
#   2. while 8 long streams flow: --scale decode=3, then `docker kill` of a
#      decode container holding streams: no request fails, every stream is
#      whole and token-identical;
#   3. stop: every worker drains and exits 0; down leaves no container and no
#      network of the project.
. "$(dirname "$0")/lib.sh"
require_model
need_docker
plan 23

t0=$SECONDS
make -s image >"$T/image.log" 2>&1 &
PIDS+=($!) # stopped with the rest if the test is interrupted
if wait $!; then
    ok "make image builds pdserve:latest ($(since $t0) s; $(docker image inspect -f '{{.Size}}' pdserve:latest | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
else
    not_ok "make image" "$(tail -n 3 "$T/image.log" | tr '\n' ' ')"
    exit 1
fi

export COMPOSE_PROJECT_NAME=pdtest$$
CPORT=$(free_port)
HPORT=$(free_port)
export PD_BIND=127.0.0.1 PD_CLIENT_PORT=$CPORT PD_HTTP_PORT=$HPORT
export PD_MODELS
PD_MODELS=$(realpath "$(dirname "$MODEL")")
export PD_MODEL
PD_MODEL=$(basename "$MODEL")
# The cluster tests' settings (lib.sh COMMON_SETS) as PD_CFG_* variables, and
# a quick health check so the test need not wait 10 s for the first one.
cat >"$T/test.yml" <<'EOF'
x-test: &test
  environment:
    PD_CFG_MODEL_THREADS: "1"
    PD_CFG_KV_NUM_BLOCKS: "1024"
    PD_CFG_WORKER_HEARTBEAT_MS: "200"
    PD_CFG_ROUTER_HEARTBEAT_MS: "200"
    PD_CFG_WORKER_LIVENESS: "10"
    PD_CFG_ROUTER_LIVENESS: "10"
  healthcheck:
    interval: 1s
services:
  router: *test
  prefill: *test
  decode: *test
EOF
DC=(docker-compose -f deploy/docker-compose.yml -f "$T/test.yml")
on_exit "COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME ${DC[*]} down --remove-orphans -t 5"
ROUTER=tcp://127.0.0.1:$CPORT

t0=$SECONDS
if ! "${DC[@]}" up -d --scale prefill=2 --scale decode=2 >"$T/up.log" 2>&1; then
    not_ok "compose up" "$(tail -n 3 "$T/up.log" | tr '\n' ' ')"
    exit 1
fi
wait_workers 4
ok "compose up --scale prefill=2 --scale decode=2: 4 workers registered ($(since $t0) s)"
# docker logs of every service, for the failure report.

ips() { # SERVICE: the containers' addresses, sorted
    local c
    for c in $("${DC[@]}" ps -q "$1"); do
        docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$c"
    done | sort
}
want=$(ips decode | sed 's|.*|tcp://&:7000|')
got=$(status_field 's.workers.filter(w => w.role == "decode").map(w => w.kv_endpoint).sort().join("\n")')
check "each decode worker announces its container's address ($(echo $got))" \
    test -n "$want" -a "$got" = "$want"
healthy() {
    local c
    for c in $("${DC[@]}" ps -q); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$c")" = healthy ] || return 1
    done
}
wait_healthy() { for _ in $(seq 1 60); do healthy && return 0; sleep 0.5; done; return 1; }
check "every container's HEALTHCHECK reports healthy" wait_healthy
check "GET /health on the published HTTP port answers 200" \
    bash -c "curl -sf http://127.0.0.1:$HPORT/health | grep -q '\"status\":\"ok\"'"

t0=$SECONDS
N=20
workload $N
refs $N "$T"
send_all $N "$T"
check_streams "$T" $N "20 requests through the containers"
echo "# 20 requests: $(since $t0) s"

# ---- 2. scale up, then kill a decode container, while streams flow ----
# Batch A flows while compose adds a decode container; batch B (the same
# requests) starts once it has registered, and a decode container holding
# some of B's streams is killed mid-stream.
t0=$SECONDS
N2=8
PROMPTS=()
ARGS=()
for ((i = 0; i < N2; i++)); do
    PROMPTS[i]="${WORDS[*]:i:6}"
    ARGS[i]="-n 1200 --ignore-eos"
    ((i % 2)) && ARGS[i]+=" --temp 0.7 --top-k 40 --seed $((i + 3))"
done
mkdir -p "$T/a" "$T/b"
refs $N2 "$T/a"
cp "$T"/a/ref_* "$T/b/"
mid_stream() { # DIR: wait until some stream has passed index 100
    for _ in $(seq 1 400); do
        grep -q '"index":1[0-9][0-9],' "$1"/out_*.jsonl 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
send_all $N2 "$T/a" &
sender_a=$!
mid_stream "$T/a"
"${DC[@]}" up -d --no-recreate --scale prefill=2 --scale decode=3 >"$T/scale.log" 2>&1
check "--scale decode=3 while streams flow: a fifth worker registers" \
    wait_status 's.workers.length == 5 && s.workers.filter(w => w.role == "decode").length == 3'
# The decode workers are stopped (SIGSTOP to their host PIDs, far inside
# the 2 s liveness window) from the status to the kill, so no stream the
# status counts can end before the kill (one did once: the victim held 1
# stream, it ended, and nothing was re-dispatched); the others are
# continued after it. The PIDs are looked up first: a `docker kill -s STOP`
# per container took long enough for every stream to end first.
dpids=$(for c in $("${DC[@]}" ps -q decode); do docker inspect -f '{{.State.Pid}}' "$c"; done)
send_all $N2 "$T/b" &
sender_b=$!
mid_stream "$T/b"
kill -STOP $dpids
cli status --json >"$T/status-before-kill.json"
victim=$(node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1]));
    // the decode worker holding the most streams
    const w = s.workers.filter(w => w.role == "decode" && w.assigned > 0)
        .sort((a, b) => b.assigned - a.assigned)[0];
    console.log(w ? w.id + " " + w.assigned : "");' "$T/status-before-kill.json")
held=${victim#* }
victim=${victim%% *}
if [ -n "$victim" ] && docker kill "$victim" >/dev/null 2>&1; then
    ok "docker kill of decode container $victim mid-stream (it held $held requests)"
else
    seen=$(node -e 'try { const s = JSON.parse(require("fs").readFileSync(process.argv[1]));
        console.log(s.workers.map(w => w.role + ":" + w.id.slice(0, 12) + ":assigned=" + w.assigned).join(" ")
                    + " active_requests=" + s.active_requests);
    } catch (e) { console.log("no status: " + e.message); }' "$T/status-before-kill.json" 2>&1)
    not_ok "docker kill of a decode container holding streams" "victim '$victim'; status: $seen"
fi
kill -CONT $dpids 2>/dev/null # the victim's is gone (SIGKILL ends a stopped process)
wait $sender_a $sender_b
check_streams "$T/a" $N2 "streams while compose scales decode to 3"
check_streams "$T/b" $N2 "decode container killed mid-stream"
check "no request failed (router counters)" test "$(status_field 's.requests_failed')" = 0
"${DC[@]}" logs --no-color router >"$T/router-container.log" 2>&1
check "the router removed the killed worker and re-dispatched its requests" \
    bash -c "grep -q 'event=worker_removed worker=$victim' '$T/router-container.log' &&
             grep -q 'event=requeue' '$T/router-container.log'"
echo "# scale + kill: $(since $t0) s"

# ---- 3. stop and down ----
t0=$SECONDS
"${DC[@]}" logs --no-color >"$T/compose.log" 2>&1
"${DC[@]}" stop -t 40 >"$T/stop.log" 2>&1
drained() { # every container but the killed one exited 0
    local c id code n=0
    for c in $("${DC[@]}" ps -aq); do
        id=$(docker inspect -f '{{.Id}}' "$c")
        code=$(docker inspect -f '{{.State.ExitCode}}' "$c")
        [[ $id == "$victim"* ]] && continue
        echo "# $(docker inspect -f '{{.Name}}' "$c") exit $code"
        [ "$code" = 0 ] || return 1
        n=$((n + 1))
    done
    [ $n = 5 ]
}
check "stop: the router and the 4 other workers exit 0 (workers drained)" drained
"${DC[@]}" down --remove-orphans -t 5 >"$T/down.log" 2>&1
left_c=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" | wc -l)
left_n=$(docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" | wc -l)
check "down leaves no container ($left_c) and no network ($left_n) of the project" \
    test "$left_c" = 0 -a "$left_n" = 0
echo "# stop + down: $(since $t0) s"

# ---- 4. the multi-node override, its hosts played by this one ----
# deploy/keys.sh makes the CURVE keys, mounted as compose secrets; the
# router publishes its worker port; the workers use the host's network and
# reach the router at PD_ROUTER_HOST (here 127.0.0.1, their KV ports bound
# on loopback too), as they would from other machines.
t0=$SECONDS
export COMPOSE_PROJECT_NAME=pdtestmn$$
deploy/keys.sh "$T/secrets" >/dev/null
export PD_SECRETS=$T/secrets PD_ROUTER_HOST=127.0.0.1 PD_WORKER_PORT
PD_WORKER_PORT=$(free_port)
cat >"$T/test-mn.yml" <<'YML'
services:
  prefill:
    environment:
      PD_CFG_DECODE_KV_ENDPOINT: tcp://127.0.0.1:0
  decode:
    environment:
      PD_CFG_DECODE_KV_ENDPOINT: tcp://127.0.0.1:0
YML
MN=(docker-compose -f deploy/docker-compose.yml -f deploy/docker-compose.multinode.yml -f "$T/test.yml" -f "$T/test-mn.yml")
on_exit "COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME ${MN[*]} down --remove-orphans -t 5"
"${MN[@]}" up -d router >"$T/mn-up.log" 2>&1
"${MN[@]}" up -d --no-deps --scale prefill=2 --scale decode=2 prefill decode >>"$T/mn-up.log" 2>&1
set -a
. "$T/secrets/client.env"
set +a
wait_workers 4
ok "multi-node override: 4 host-networked workers register over CURVE with the keys as secrets"
got=$(status_field 's.workers.filter(w => w.role == "decode").map(w => w.kv_endpoint + " " + w.id).join(",")')
check "decode workers announce a host address and unique ids ($got)" \
    bash -c "[[ '$got' =~ ^tcp://127\.0\.0\.1:[0-9]+\ [0-9a-z.-]+-decode-[0-9a-f]{6},tcp://127\.0\.0\.1:[0-9]+\ [0-9a-z.-]+-decode-[0-9a-f]{6}$ ]]"
mkdir -p "$T/mn"
N=8
workload $N
for ((i = 0; i < N; i++)); do cp "$T/ref_$i.txt" "$T/mn/"; done
send_all $N "$T/mn"
check_streams "$T/mn" $N "multi-node override over CURVE"
out=$(env -u PD_CURVE_SERVER_KEY timeout 20 "$PD_BIN/pd-cli" --router "$ROUTER" generate hello -n 4 --timeout 1500 2>&1)
check "a plain-text client is refused" test $? = 1
"${MN[@]}" down --remove-orphans -t 40 >"$T/mn-down.log" 2>&1
check "down leaves nothing of the multi-node project" \
    test "$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" | wc -l)" = 0
echo "# multi-node override: $(since $t0) s"
