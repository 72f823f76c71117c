# Shared by the bench section scripts, which source it (not a section itself: scripts/bench.sh
# runs bench/*.sh). Needs ROOT and PY set.

# A scratch directory $W and the list PIDS of every process the script starts: at exit each
# is killed and waited for (by pid), then $W is removed. log() prints progress as [TAG].
bench_start() { # TAG
  BENCH_TAG=$1
  W=$(mktemp -d "/tmp/modelgate-bench-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
log() { echo "[$BENCH_TAG] $*" >&2; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Chat bodies of exactly 1 KiB and 100 KiB in $W: the gateway-facing ones name the alias
# `llama3` (the router rewrites it), the sidecar-facing ones the served name.
write_chat_bodies() {
  "$PY" - "$W" <<'PY'
import json, sys
def body(model, size):
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": ""}]
    doc = {"model": model, "messages": msgs, "max_tokens": 16}
    n = size - len(json.dumps(doc, separators=(",", ":")))
    msgs[1]["content"] = ("lorem ipsum dolor sit amet " * (n // 27 + 1))[:n]
    out = json.dumps(doc, separators=(",", ":"))
    assert len(out) == size, (len(out), size)
    return out
for model, tag in (("llama3", "alias"), ("llama-3-8b", "served")):
    for size, name in ((1024, "1k"), (102400, "100k")):
        open(f"{sys.argv[1]}/body-{tag}-{name}.json", "w").write(body(model, size))
PY
}
body_for() { # variant size
  case $1 in sidecar* | gate* | shedder*) echo "$W/body-served-$2.json" ;; *) echo "$W/body-alias-$2.json" ;; esac
}

# Waits until a 1 KiB chat completion through proxy variant V answers 200 (a gate needs its
# first health poll); fails, with the end of the proxy's log, if it dies or TRIES tenths of a
# second pass first.
wait_ready() { # variant port pid tries
  local v=$1 port=$2 pid=$3 tries=$4 code=
  for _ in $(seq "$tries"); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
      --data-binary @"$(body_for "$v" 1k)" "http://127.0.0.1:$port/v1/chat/completions" || true)
    [ "$code" = 200 ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench: variant $v never answered 200 (last $code):" >&2
  tail -5 "$W/$v.log" >&2
  return 1
}
