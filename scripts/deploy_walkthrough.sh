#!/usr/bin/env bash
# The walk-through of docs/deployment.md ("Three devices with their own data"), run as written on
# loopback (SERVER=127.0.0.1): TLS certificates, a key pair per device and its registration, an
# authenticating SuperLink, three SuperNodes with their own CSVs (each with its long-lived
# worker), the run, and the PEFT-loadable adapter at the end. Prints each command ("$ ...") and
# its output; the outputs shown in the docs are this script's.
#
#     bash scripts/deploy_walkthrough.sh [WORKDIR]
#
# Every process it starts is stopped by its PID when it exits (also on failure or Ctrl-C).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-$(mktemp -d /tmp/fedquad-walk-XXXXXX)}
mkdir -p "$W" && cd "$W"
export PATH="$REPO/.venv/bin:$PATH" FLWR_HOME="$W/flwr-home" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export HF_HUB_OFFLINE=1 FEDQUAD_QUANT_COMPILE=0 TOKENIZERS_PARALLELISM=false
SERVER=127.0.0.1
PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
show() { echo "\$ $*"; bash -c "$*" 2>&1 | sed 's/^/    /'; }   # a command and its (indented) output
started=$(date +%s)

echo "## certificates (SuperLink machine)"
show 'mkdir -p certs && openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=fedquad CA" -keyout certs/ca.key -out certs/ca.crt 2>/dev/null && echo ok'
show 'openssl req -newkey rsa:2048 -nodes -subj "/CN=superlink" -keyout certs/server.key -out certs/server.csr 2>/dev/null && echo ok'
show "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:$SERVER\n' > certs/san.ext"
show 'openssl x509 -req -days 365 -in certs/server.csr -CA certs/ca.crt -CAkey certs/ca.key -CAcreateserial -extfile certs/san.ext -out certs/server.pem'

echo "## each device's own data (here: three CSVs with different label skews)"
python - <<'EOF'
import csv, os
import numpy as np
from fedquad.datasets import load_task
data, rng = load_task("synthetic", "train"), np.random.default_rng(0)
pools = {c: list(rng.permutation(np.flatnonzero(data.labels == c))) for c in (0, 1)}
for i, positive in enumerate((0.15, 0.85, 0.5)):
    os.makedirs(f"device{i}", exist_ok=True)
    take = [pools[1].pop() for _ in range(int(200 * positive))] + [pools[0].pop() for _ in range(200 - int(200 * positive))]
    with open(f"device{i}/train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        w.writerows((data.texts[j], data.label_names[int(data.labels[j])]) for j in sorted(take))
EOF
show 'head -3 device0/train.csv; for d in device0 device1 device2; do echo "$d: $(grep -c ",positive" $d/train.csv) positive, $(grep -c ",negative" $d/train.csv) negative"; done'

echo "## SuperLink with TLS and SuperNode authentication"
echo "\$ flower-superlink --host 127.0.0.1 --port $PORT --enable-supernode-auth --ssl-ca-certfile certs/ca.crt --ssl-certfile certs/server.pem --ssl-keyfile certs/server.key > superlink.log 2>&1 &"
flower-superlink --host 127.0.0.1 --port "$PORT" --enable-supernode-auth --ssl-ca-certfile certs/ca.crt \
  --ssl-certfile certs/server.pem --ssl-keyfile certs/server.key > superlink.log 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do python -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && break; sleep 0.3; done
mkdir -p "$FLWR_HOME"
printf '[superlink]\ndefault = "fedquad"\n\n[superlink.fedquad]\naddress = "%s:%s"\nroot-certificates = "%s"\n' \
  "$SERVER" "$PORT" "$W/certs/ca.crt" > "$FLWR_HOME/config.toml"
show 'cat "$FLWR_HOME/config.toml"'

echo "## a key pair per device, registered by the operator"
for i in 0 1 2; do
  show "ssh-keygen -q -t ecdsa -b 384 -N '' -f device$i/node_key && ls device$i"
  show "flwr supernode register device$i/node_key.pub fedquad"
done

echo "## on each device: its worker and its SuperNode"
for i in 0 1 2; do
  budget=$(echo "0.72 0.8 1.1" | cut -d' ' -f$((i + 1)))
  class=$(echo "jetson-tx2 jetson-orin-nano jetson-agx-orin" | cut -d' ' -f$((i + 1)))
  echo "\$ python -m fedquad.flower.worker --socket \$PWD/device$i/worker.sock > device$i/worker.log 2>&1 &"
  python -m fedquad.flower.worker --socket "$W/device$i/worker.sock" > "device$i/worker.log" 2>&1 &
  PIDS+=($!)
  config="data-path=\"$W/device$i/train.csv\" eval-fraction=0.2 cache-dir=\"$W/device$i/cache\" worker-socket=\"$W/device$i/worker.sock\" device-id=\"device$i\" device-class=\"$class\" memory-budget-fraction=$budget"
  echo "\$ flower-supernode --superlink $SERVER:$PORT --root-certificates certs/ca.crt --auth-supernode-private-key device$i/node_key --port $((PORT + 1 + i)) --node-config '$config' > device$i/supernode.log 2>&1 &"
  flower-supernode --superlink "$SERVER:$PORT" --root-certificates certs/ca.crt --auth-supernode-private-key "device$i/node_key" \
    --port $((PORT + 1 + i)) --node-config "$config" > "device$i/supernode.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 120); do [ -S device0/worker.sock ] && [ -S device1/worker.sock ] && [ -S device2/worker.sock ] && break; sleep 0.5; done
sleep 5
show 'flwr supernode list fedquad 2>&1 | grep -E "online|Status|Node ID" | head -5'

echo "## the run (from a copy of the app config: flwr run may rewrite the one it is given)"
mkdir -p app && cp "$REPO/pyproject.toml" app/
# PROFILE=<a profile.json for tiny-bert at batch 8 x 24> skips the server's profile measurement
PROFILE_CONFIG=${PROFILE:+" profile='$PROFILE'"}
show "flwr run app fedquad --stream --run-config \"rounds=3 min-nodes=3 federated-eval=true profile-repeats=1 train-examples=200 max-len=24 batch-size=8 local-steps=2 run-dir='$W/run'$PROFILE_CONFIG\" | grep -E 'fedquad server|Run finished|rror' | cut -c1-220"
show 'flwr ls fedquad 2>&1 | tail -6'
show 'ls run run/adapter'

echo "## the adapter, loaded with PEFT"
show "python - <<'EOF'
import transformers
from peft import PeftModel
from fedquad.models import load_model
base = transformers.AutoModelForSequenceClassification.from_config(load_model('tiny-bert', with_tokenizer=False).model.config)
model = PeftModel.from_pretrained(base, '$W/run/adapter')
print(type(model).__name__, model.active_adapter, sum(p.numel() for n, p in model.named_parameters() if 'lora_' in n), 'LoRA parameters')
EOF"
echo "walk-through done in $(( $(date +%s) - started )) s; work folder $W"
