#!/usr/bin/env bash
# A Pipecat Twilio + Gemini Live bot for the load bench: installed from PyPI into a venv of its
# own (never a phonebot dependency), run against the bench's fake model, and measured by
# `python -m bench.load --target`.
#
#   bash bench/peers/pipecat.sh install              # make the venv (once)
#   bash bench/peers/pipecat.sh bench [bench.load options, e.g. --calls 10,20,30]
#   bash bench/peers/pipecat.sh serve                # run the bot alone (prints the env it uses)
#
# `bench` starts the bot pinned to the first core (as bench.load pins phonebot), runs
# `python -m bench.load --target ... --pid ...` (which pins itself to the second core), and
# stops the bot. Pipecat's version: PIPECAT_VERSION (default below); the venv lives in
# PHONEBOT_BENCH_CACHE (default ~/.cache/phonebot-bench); PIPECAT_RATES=8000,8000 runs the
# pipeline at Twilio's rate instead of Pipecat's defaults (see pipecat_bot.py).
set -euo pipefail
cd "$(dirname "$0")/../.."

version="${PIPECAT_VERSION:-1.14.0}"
cache="${PHONEBOT_BENCH_CACHE:-$HOME/.cache/phonebot-bench}"
venv="$cache/pipecat-$version"
port="${PIPECAT_PORT:-8766}"
model_port="${BENCH_MODEL_PORT:-8765}"
python="${PYTHON:-python3}"
bench_python="${BENCH_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"

install() {
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import pipecat, uvicorn" 2>/dev/null; then
    return
  fi
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "pipecat-ai[websocket,google]==$version" "uvicorn[standard]>=0.35"
}

# The environment the bench prints for a --target service (fake model URL, its CA, API key).
bench_env() {
  "$bench_python" -m bench.load --print-env --model-port "$model_port" --tls-dir "$cache" \
    | sed -n 's/^  \([A-Z_]*=.*\)$/\1/p'
}

# Run the bot (exec: in the background its pid is $!) with the environment given as arguments.
serve() {
  local pin=()
  if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    pin=(taskset -c "${PIPECAT_CORE:-0}")
  fi
  local model
  model="$("$bench_python" -c 'from phonebot.settings import DEFAULT_MODEL; print(DEFAULT_MODEL)')"
  exec env "$@" "${pin[@]}" "$venv/bin/python" bench/peers/pipecat_bot.py --port "$port" \
    --rates "${PIPECAT_RATES:-16000,24000}" --model "$model"
}

case "${1:-bench}" in
  install) install ;;
  serve) install; mapfile -t vars < <(bench_env); printf '%s\n' "${vars[@]}"; serve "${vars[@]}" ;;
  bench)
    shift || true
    install
    mapfile -t vars < <(bench_env)  # before the bench's own fake model takes the port
    log="$cache/pipecat-bot.log"
    serve "${vars[@]}" >"$log" 2>&1 &
    bot=$!
    trap 'kill "$bot" 2>/dev/null; wait "$bot" 2>/dev/null || true' EXIT
    echo "pipecat $version bot: pid $bot, port $port, log $log"
    "$bench_python" -m bench.load --target "http://127.0.0.1:$port" --pid "$bot" \
      --model-port "$model_port" --tls-dir "$cache" --health-path none --voice-path / "$@"
    ;;
  *) echo "usage: $0 install | serve | bench [bench.load options]" >&2; exit 2 ;;
esac
