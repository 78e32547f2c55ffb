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
