#!/usr/bin/env bash
# Helpers shared by the TIPC scripts: strict config parsing and step bookkeeping.

# config_value FILE LINE KEY: the value on line LINE, which must hold KEY (else exit 2 naming it).
function config_value() {
    local file=$1 lineno=$2 key=$3 line found
    line=$(sed -n "${lineno}p" "$file")
    found=${line%%:*}
    if [ "$found" != "$key" ] || [[ "$line" != *:* ]]; then
        echo "test_tipc: error: $file line $lineno: expected key '$key', found '${line}'; fix the config line" >&2
        exit 2
    fi
    echo "${line#*:}"
}

# mode_value VALUE MODE FILE LINE: pick MODE's entry from 'a=1|b=2'; a plain value is returned as is.
function mode_value() {
    local value=$1 mode=$2 file=$3 lineno=$4 item
    if [[ "$value" != *=* ]]; then
        echo "$value"
        return
    fi
    IFS='|' read -r -a items <<< "$value"
    for item in "${items[@]}"; do
        if [ "${item%%=*}" == "$mode" ]; then
            echo "${item#*=}"
            return
        fi
    done
    echo "test_tipc: error: $file line $lineno: no value for mode '$mode' in '$value'; add $mode=..." >&2
    exit 2
}

# status_check RC COMMAND LOG: record the step's outcome in the results log.
function status_check() {
    local rc=$1 cmd=$2 log=$3
    if [ "$rc" -eq 0 ]; then
        echo "Run successfully with command - ${cmd}!" | tee -a "$log"
    else
        echo "Run failed with command - ${cmd}!" | tee -a "$log"
    fi
}

VALID_MODES="lite_train_lite_infer whole_train_whole_infer"

function check_mode() {
    local mode=$1
    for m in $VALID_MODES; do
        [ "$m" == "$mode" ] && return 0
    done
    echo "test_tipc: error: unknown mode '$mode'; use one of: $VALID_MODES" >&2
    exit 2
}

# check_args CONFIG MODE: both given, the mode known, the config present (else exit 2).
function check_args() {
    local file=$1 mode=$2
    check_mode "$mode"
    if [ ! -f "$file" ]; then
        echo "test_tipc: error: config '$file' does not exist" >&2
        exit 2
    fi
}

# run_step NAME COMMAND...: run COMMAND with its output in $LOG_PATH/NAME.log, record the outcome
# in $status_log, set failed=1 and show the log's tail if it failed; returns COMMAND's status.
function run_step() {
    local name=$1; shift
    eval "$*" > "${LOG_PATH}/${name}.log" 2>&1
    local rc=$?
    status_check $rc "$*" "$status_log"
    [ $rc -eq 0 ] || { failed=1; tail -n 5 "${LOG_PATH}/${name}.log" | sed 's/^/    | /'; }
    return $rc
}
