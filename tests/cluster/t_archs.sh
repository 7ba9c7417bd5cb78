#!/bin/bash
# The newer architectures through the whole cluster: for one file of each
# (Llama 3.x with rope_freqs, Qwen3, Gemma 2, Gemma 3, Phi-3; a different
# tensor type each), a router, a prefill and a decode worker serve 4
# concurrent requests (prompts of 1 to ~450 tokens: past Gemma's 16-position
# windows, KV handed from prefill to decode) and every stream is whole and
# token-identical to pd-run on the same request; the router recognises each
# file's chat template and serves /v1/chat/completions with it. Contexts are sized alike
# (model.max_seq_len = pd-run --ctx = 1024): phi3's rope factors depend on it.
. "$(dirname "$0")/lib.sh"
FILES=(llama3-tiny-q4_k_m qwen3-tiny-q6_k gemma2-tiny-q8_0 gemma3-tiny-q4_k_m phi3-tiny-f16)
# The chat family the router must recognise in each file's template.
FAMILIES=(llama3 chatml gemma gemma phi3)
CTX=1024
for f in "${FILES[@]}"; do
    MODEL=$MODELS/$f.gguf
    require_model
done
# check_streams' two results and two chat checks per file, then the two
# registration checks
plan $((4 * ${#FILES[@]} + 2))

# Stops this model's processes (cleanup stops whatever is left at exit).
stop_cluster() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    PIDS=()
}

N=4
workload $N
for k in "${!FILES[@]}"; do
    f=${FILES[k]}
    MODEL=$MODELS/$f.gguf
    D=$T/$f
    mkdir -p "$D"
    start_router --set model.max_seq_len=$CTX --set http.listen=127.0.0.1:0
    # Quantized products batch-invariant on both sides (pd-run too): without
    # it a prompt prefilled beside others goes through sgemm in another
    # shape, its last bits may differ and a greedy stream may drift (seen:
    # qwen3-tiny-q6_k, one stream of 4 from its 17th token).
    start_worker prefill "p-$f" --set model.max_seq_len=$CTX --set model.batch_invariant_quant=true
    start_worker decode "d-$f" --set model.max_seq_len=$CTX --set model.batch_invariant_quant=true
    wait_workers 2
    for ((i = 0; i < N; i++)); do
        # shellcheck disable=SC2086
        ref_tokens "$D/ref_$i.txt" -p "${PROMPTS[i]}" ${ARGS[i]} --ctx $CTX --batch-invariant-quant
    done
    send_all $N "$D"
    check_streams "$D" $N "$f 1P+1D"
    # The OpenAI chat endpoint with the template the file carries.
    check "$f: the router recognises the file's chat template as ${FAMILIES[k]}" \
        bash -c "grep 'event=chat_template' '$T/router.log' | tail -1 | grep -q 'family=${FAMILIES[k]} source=gguf'"
    HTTP=$(grep '^http=' "$T/router.ready" | cut -d= -f2-)
    curl -s -o "$D/chat.json" -w '%{http_code}' --max-time 60 "http://$HTTP/v1/chat/completions" \
        -H 'Content-Type: application/json' \
        -d '{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello there"}],"max_tokens":8,"temperature":0}' \
        >"$D/chat.code" 2>/dev/null
    check "$f: /v1/chat/completions answers 200 with a message ($(head -c 120 "$D/chat.json"))" \
        node -e 'const fs = require("fs"), [code, body] = process.argv.slice(1);
            const j = JSON.parse(fs.readFileSync(body, "utf8")), c = j.choices && j.choices[0];
            process.exit(fs.readFileSync(code, "utf8") === "200" && c && c.message &&
                typeof c.message.content === "string" && j.usage.completion_tokens > 0 ? 0 : 1);' \
        "$D/chat.code" "$D/chat.json"
    stop_cluster
done

# phi3's LongRoPE factors depend on the context: a worker sized for 100
# positions (short factors; the router's 1024 takes the long ones) would
# write other K, and is refused at registration. A llama file's identity
# does not depend on the context: the same worker registers.
MODEL=$MODELS/phi3-tiny-f16.gguf
start_router --set model.max_seq_len=$CTX
start_worker decode d-short --set model.max_seq_len=100
rc=alive
for _ in $(seq 1 300); do # a refused worker exits 1 (30 s at most)
    kill -0 "$LAST_PID" 2>/dev/null || { wait "$LAST_PID"; rc=$?; break; }
    sleep 0.1
done
check "phi3: a worker whose context picks the other rope factors is refused" \
    bash -c "[ $rc = 1 ] && grep -q 'event=refused_by_router.*model identity' '$T/d-short.log'"
stop_cluster
MODEL=$MODELS/llama3-tiny-q4_k_m.gguf
start_router --set model.max_seq_len=$CTX
start_worker decode d-short-llama --set model.max_seq_len=100
wait_workers 1
ok "llama3: a worker with another context registers (the identity does not depend on it)"
exit "$FAILED"
