#!/bin/bash
# Behaves as the official image's entrypoint: `serve` starts TorchServe with the
# mounted config (token auth off, as there) and keeps the container in the
# foreground; anything else is run as a command.
set -e
if [[ "$1" = "serve" ]]; then
    shift 1
    torchserve --start --ts-config /home/model-server/config.properties --disable-token-auth "$@"
else
    eval "$@"
fi
tail -f /dev/null
