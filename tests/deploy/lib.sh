# tests/deploy/lib.sh -- shared by tests/deploy/t_*.sh (containers, network
# namespaces). Builds on tests/cluster/lib.sh (TAP lines, the workload,
# pd-run references, check_streams.mjs) and adds:
#
#   need_docker               docker-deps.sh, or a skip line naming why docker cannot run
#   free_port                 a free TCP port on 127.0.0.1
#   on_exit CMD               run CMD (a string) at exit, before lib.sh's cleanup, even
#                             on failure; later registrations run first
#
# Every container, network, namespace, bridge a test makes is removed by
# what it registers with on_exit.
. "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"

ON_EXIT=()
deploy_cleanup() {
    local i
    for ((i = ${#ON_EXIT[@]} - 1; i >= 0; i--)); do
        eval "${ON_EXIT[i]}" >/dev/null 2>&1 || true
    done
    cleanup
}
trap deploy_cleanup EXIT
on_exit() { ON_EXIT+=("$1"); }

need_docker() {
    if ! scripts/docker-deps.sh >"$T/docker-deps.log" 2>&1; then
        skip_all "docker cannot run here: $(tail -n 1 "$T/docker-deps.log")"
    fi
}

free_port() {
    node -e 'const s = require("net").createServer().listen(0, "127.0.0.1",
        () => { console.log(s.address().port); s.close(); });'
}

# Seconds since $1 (a $SECONDS value), for the time each phase takes.
since() { echo $((SECONDS - $1)); }
