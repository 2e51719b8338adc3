#!/bin/sh
# One-shot set-up of the compose cluster, the same steps a consortium follows by hand (README,
# "Running a consortium"): a key per node, one genesis, one config per node. Writes into
# /cluster (a shared volume) once; a second run finds the genesis and changes nothing.
set -eu
OUT="${CLUSTER_DIR:-/cluster}"
NODES="node0 node1 node2 node3"
if [ -f "$OUT/genesis.json" ]; then
  echo "setup: $OUT/genesis.json exists; keeping the cluster as it is" >&2
  exit 0
fi
mkdir -p "$OUT"
ARGS=""
for n in $NODES; do
  mkdir -p "$OUT/$n"
  pub=$(phalanx keygen --out "$OUT/$n/node.key")
  ARGS="$ARGS --validator $n=$pub"
done
client=$(phalanx keygen --out "$OUT/client.key")
# shellcheck disable=SC2086  # ARGS holds several options on purpose
phalanx genesis create --chain-id "${CHAIN_ID:-phalanx-compose}" $ARGS \
  --account "$client=1000000000000" --out "$OUT/genesis.json.tmp"
for n in $NODES; do
  PEERS=""
  for p in $NODES; do
    [ "$p" = "$n" ] || PEERS="$PEERS --peer $p=$p:7100"
  done
  # shellcheck disable=SC2086
  phalanx node init --name "$n" --genesis "$OUT/genesis.json.tmp" --key "$OUT/$n/node.key" \
    --listen 0.0.0.0:7100 --api 0.0.0.0:7000 $PEERS --data-dir "/var/lib/phalanx/data" \
    --out "$OUT/$n/node.json" >/dev/null
  sed -i "s#$OUT/genesis.json.tmp#$OUT/genesis.json#" "$OUT/$n/node.json"
done
mv "$OUT/genesis.json.tmp" "$OUT/genesis.json"
echo "setup: wrote $OUT (4 validators; client key $OUT/client.key)" >&2
