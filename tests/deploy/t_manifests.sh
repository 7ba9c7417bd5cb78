#!/bin/bash
# The deployment files validate, offline, and an invalid one is shown to fail:
#   - deploy/k8s/*.yaml against the Kubernetes API schemas with strict field
#     checking (tests/deploy/k8s-check/check.mjs, npm kubernetes-models), and
#     what a pdserve cluster needs of them (project.mjs: drain on preStop within
#     the grace period, probes, requests, keys from the Secret, HPAs on metrics
#     the adapter serves); the ConfigMap's config loads with pd-router's parser;
#   - every planted fault in tests/deploy/k8s-bad/ is refused, naming the field;
#   - deploy/docker-compose.yml alone and with the multi-node override pass
#     `docker-compose config` (compose's own schema); a planted bad one fails.
. "$(dirname "$0")/lib.sh"
[ -x "$PD_BIN/pd-router" ] || skip_all "$PD_BIN/pd-router missing (make all)"
scripts/k8s-deps.sh >"$T/k8s-deps.log" 2>&1 || skip_all "npm packages: $(tail -n 1 "$T/k8s-deps.log")"
plan 32
CHECK=tests/deploy/k8s-check/check.mjs

node "$CHECK" deploy/k8s/*.yaml >"$T/k8s.txt" 2>&1
rc=$? # (taken before the name's own $(grep ...) could replace $?)
check "deploy/k8s: every object valid against the API schemas, no unknown field ($(grep -c '^ok' "$T/k8s.txt") files)" \
    test $rc = 0
grep -v '^ok' "$T/k8s.txt" | sed 's/^/# /'
checker "project.mjs" node tests/deploy/k8s-check/project.mjs deploy/k8s "$T/configmap-config.yaml"
loads() { "$PD_BIN/$1" --config "$2" --help 2>"$T/parse.err" || { sed 's/^/# /' "$T/parse.err"; return 1; }; }
check "the ConfigMap's config.yaml loads with pd-router's own parser" \
    loads pd-router "$T/configmap-config.yaml"
check "deploy/config.yaml (the image's) loads with every role's parser" \
    bash -c "$(declare -f loads); T=$T PD_BIN=$PD_BIN; loads pd-router deploy/config.yaml && loads pd-decode deploy/config.yaml"

# file: the path the checker must name
PLANTED=(
    "type.yaml:spec.replicas: must be integer"
    "typo.yaml:spec.template.spec.containers[0].livenessprobe: unknown field"
    "deep.yaml:spec.template.spec.containers[0].livenessProbe.exec.comand: unknown field"
    "enum.yaml:spec.template.spec.containers.0.imagePullPolicy: must be equal to one of the allowed values"
    "required.yaml:spec: must have required property scaleTargetRef"
    "selector.yaml:spec.selector.matchLabels.app: does not match the template's labels"
    "volume.yaml:container decode: volumeMount scratch: no such volume"
)
for p in "${PLANTED[@]}"; do
    f=tests/deploy/k8s-bad/${p%%:*}
    out=$(node "$CHECK" "$f" 2>&1)
    rc=$?
    if [ $rc = 1 ] && echo "$out" | grep -qF -- "${p#*:}"; then
        ok "planted in ${p%%:*} ($(head -1 "$f" | sed 's/^# planted: //')): refused"
    else
        not_ok "planted in ${p%%:*} refused naming '${p#*:}'" "rc $rc: $out"
    fi
done

if command -v docker-compose >/dev/null || scripts/docker-deps.sh >/dev/null 2>&1; then
    export PD_SECRETS=$T/secrets
    mkdir -p "$PD_SECRETS"
    touch "$PD_SECRETS"/{router,prefill,decode}.yaml
    check "docker-compose config: deploy/docker-compose.yml" \
        docker-compose -f deploy/docker-compose.yml config -q
    check "docker-compose config: with deploy/docker-compose.multinode.yml" \
        docker-compose -f deploy/docker-compose.yml -f deploy/docker-compose.multinode.yml config -q
    sed 's/^    command: \["decode"\]/    comand: ["decode"]/' deploy/docker-compose.yml >"$T/bad-compose.yml"
    out=$(cd deploy && docker-compose -f "$T/bad-compose.yml" config -q 2>&1)
    check "docker-compose config refuses a planted typo (comand)" \
        bash -c "[ $? != 0 ] && echo \"\$1\" | grep -q comand" _ "$out"
else
    not_ok "docker-compose available to validate the compose files"
fi
