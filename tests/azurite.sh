#!/usr/bin/env bash
# Makes sure Azurite (Microsoft's Azure Storage emulator, from the npm
# registry) serves the Blob API on 127.0.0.1:10000 for the remote-state test
# on `az://` (tests/remote_state.rs), with the container `sluice-tests`
# (anonymous read, so that a test can list what a worker uploaded), and
# checks that it honours conditional creates (`If-None-Match: *`: a second
# create of the same blob is refused), which sluice's write-once objects
# rely on. Idempotent: installs only what is missing, starts Azurite only
# if nothing answers.
#
#   bash tests/azurite.sh            # then: eval "$(bash tests/azurite.sh --env)"
#   bash tests/azurite.sh --env      # only print the export lines
#   bash tests/azurite.sh stop       # stop the server this script started
#
# Azurite keeps blobs in memory here: a restart loses them.
set -euo pipefail

HOST=127.0.0.1
PORT="${SLUICE_AZURITE_PORT:-10000}"
ENDPOINT="http://$HOST:$PORT"
CONTAINER=sluice-tests
# 3.35.0: the newest release that runs on Debian 12's Node.js 18 (3.36 asks
# for Node >= 21).
AZURITE_VERSION=3.35.0
SDK_VERSION=12.31.1
TOOLS="${SLUICE_TOOLS:-/root/.cache/sluice-tools}"
RUN_DIR="${TMPDIR:-/tmp}/sluice-azurite-$PORT"
PID_FILE="$RUN_DIR/azurite.pid"
AZURITE="$TOOLS/azurite-$AZURITE_VERSION/node_modules/.bin/azurite-blob"
PYTHON="$TOOLS/azure-sdk/bin/python"

print_env() {
    # object_store's emulator settings: the well-known devstoreaccount1
    # account and key, at this endpoint.
    echo "export AZURE_STORAGE_USE_EMULATOR=true"
    echo "export AZURITE_BLOB_STORAGE_URL=$ENDPOINT"
}

case "${1:-}" in
--env)
    print_env
    exit 0
    ;;
stop)
    if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        kill "$(cat "$PID_FILE")"
        rm -f "$PID_FILE"
        echo "azurite stopped"
    else
        echo "no azurite started by this script is running"
    fi
    exit 0
    ;;
"") ;;
*)
    echo "usage: $0 [--env|stop]" >&2
    exit 2
    ;;
esac

# The Blob API answers (an unsigned request is refused with 403, not
# connection refused).
answers() {
    [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$ENDPOINT/devstoreaccount1?comp=list")" =~ ^[24] ]]
}

if [[ ! -x "$PYTHON" ]]; then
    echo "==> installing azure-storage-blob==$SDK_VERSION in $TOOLS/azure-sdk"
    python3 -m venv "$TOOLS/azure-sdk"
    "$TOOLS/azure-sdk/bin/pip" install -q "azure-storage-blob==$SDK_VERSION"
fi
if answers; then
    echo "a Blob API already answers on $ENDPOINT"
else
    if [[ ! -x "$AZURITE" ]]; then
        command -v npm >/dev/null || {
            echo "npm is required to install Azurite" >&2
            exit 1
        }
        echo "==> installing azurite@$AZURITE_VERSION in $TOOLS/azurite-$AZURITE_VERSION"
        mkdir -p "$TOOLS/azurite-$AZURITE_VERSION"
        npm install --silent --no-audit --no-fund --prefix "$TOOLS/azurite-$AZURITE_VERSION" "azurite@$AZURITE_VERSION"
    fi
    mkdir -p "$RUN_DIR"
    echo "==> starting azurite on $ENDPOINT"
    nohup "$AZURITE" --blobHost "$HOST" --blobPort "$PORT" --inMemoryPersistence \
        --skipApiVersionCheck --loose >"$RUN_DIR/azurite.log" 2>&1 &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 100); do
        answers && break
        sleep 0.2
    done
    answers || {
        echo "azurite did not answer on $ENDPOINT; its log:" >&2
        cat "$RUN_DIR/azurite.log" >&2
        exit 1
    }
fi

# The container, and the conditional create check.
"$PYTHON" - "$ENDPOINT" "$CONTAINER" <<'PY'
import sys
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, PublicAccess

endpoint, container = sys.argv[1], sys.argv[2]
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
service = BlobServiceClient.from_connection_string(
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    f"AccountKey={key};BlobEndpoint={endpoint}/devstoreaccount1;"
)
try:
    service.create_container(container, public_access=PublicAccess.CONTAINER)
except ResourceExistsError:
    pass
blob = service.get_blob_client(container, "conditional-create-check")
blob.upload_blob(b"1", overwrite=True)
try:
    blob.upload_blob(b"2", overwrite=False)
except ResourceExistsError:
    pass
else:
    sys.exit("the Blob API overwrote a blob despite If-None-Match: *")
PY
echo "Blob API on $ENDPOINT, container $CONTAINER, conditional creates refused as they should be"
