#!/bin/bash
# The HTTP front with one colocated worker (--role both): /health is ready
# with it alone, completions work, and /metrics counts it as role "both".
. "$(dirname "$0")/lib.sh"
require_model
command -v curl >/dev/null || skip_all "curl missing"
plan 4
start_router --set http.listen=127.0.0.1:0
HTTP=$(grep '^http=' "$T/router.ready" | cut -d= -f2-)
[ -n "$HTTP" ] || { not_ok "the router serves HTTP"; exit 1; }
start_worker both c1
wait_workers 1
st=$(curl -s -o "$T/h" -w '%{http_code}' "http://$HTTP/health")
check "GET /health is 200 with one colocated worker" test "$st" = 200
# Both sides against pd-run's text: two empty answers (or two equal errors)
# do not agree with it.
check_served "pd-cli through the colocated worker: pd-run's answer" "the quick brown fox" -n 8 --ignore-eos
want=$("$PD_BIN/pd-run" -m "$MODEL" --threads 1 -p "the quick brown fox" -n 8 --ignore-eos 2>/dev/null)
got=$(curl -s "http://$HTTP/v1/completions" \
    -d '{"prompt":"the quick brown fox","max_tokens":8,"ignore_eos":true}' |
    node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).choices[0].text))')
check "a completion through HTTP: pd-run's answer" \
    bash -c '[ -n "$1" ] && [ "$1" = "$2" ]' _ "$got" "$want"
curl -s "http://$HTTP/metrics" >"$T/m"
check "/metrics: pdserve:workers{role=both,state=ready} 1" \
    grep -q 'pdserve:workers{model_name="[^"]*",role="both",state="ready"} 1$' "$T/m"
