#!/bin/sh
# Append a line to a file only if this holder's fencing token is not stale.
#
#   fencelock run report -- sh examples/fenced-append.sh /data/report.log "a line"
#
# `fencelock run` puts FENCELOCK_TOKEN (the fencing token) and FENCELOCK_GRANT (the grant's
# id) in the environment. The file's last writer is recorded in FILE.fence as
# "TOKEN GRANT"; a write is admitted when its token is higher, or the same grant writes
# again — the rule of fencelock::fencing::admit. A holder that was paused past its TTL,
# or a grandchild that escaped `run` with setsid, still has its old token and is refused
# once a newer holder wrote. The check and the write run under flock(1) on FILE.lock, so
# two writers that both believe they hold the lock are serialised here.
set -eu
file=$1
line=$2
: "${FENCELOCK_TOKEN:?run me under fencelock run}"
: "${FENCELOCK_GRANT:?run me under fencelock run}"
exec 9>"$file.lock"
flock 9
last_token=0
last_grant=
if [ -f "$file.fence" ]; then
    read -r last_token last_grant < "$file.fence" || true
fi
if [ "$FENCELOCK_TOKEN" -gt "$last_token" ] ||
   { [ "$FENCELOCK_TOKEN" -eq "$last_token" ] && [ "$FENCELOCK_GRANT" = "$last_grant" ]; }; then
    printf '%s\n' "$line" >> "$file"
    printf '%s %s\n' "$FENCELOCK_TOKEN" "$FENCELOCK_GRANT" > "$file.fence.tmp"
    mv "$file.fence.tmp" "$file.fence"
else
    echo "fenced-append: refused: token $FENCELOCK_TOKEN is stale (last writer had $last_token)" >&2
    exit 1
fi
