# Shared by the demo scripts (sourced after they cd to the repository root).

# Run a step with its output in a log file; on failure show the log's end and stop.
logged() {
    local log=$1
    shift
    if ! "$@" > "$log" 2>&1; then
        echo "FAILED; the last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

# Run training with its output in a log file, showing the loss every 100 iterations; on failure
# show the log's end and stop.
train_logged() {
    local log=$1
    shift
    set +e
    PYTHONUNBUFFERED=1 "$@" 2>&1 \
        | tee "$log" \
        | awk '/ iter: / {
                   for (i = 1; i <= NF; i++) {
                       if ($i == "iter:") it = $(i + 1) + 1
                       if ($i == "total_loss:") loss = $(i + 1)
                       if ($i == "eta:") eta = $(i + 1)
                   }
                   if (it % 100 == 0) { printf "   iteration %d  total loss %s  eta %s\n", it, loss, eta; fflush() }
               }'
    local status=${PIPESTATUS[0]}
    set -e
    if [[ $status -ne 0 ]]; then
        echo "FAILED; the last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}
