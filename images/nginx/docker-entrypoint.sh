#!/bin/sh
# Same behaviour as the official image's entrypoint: when starting nginx, run the
# scripts in /docker-entrypoint.d first; any other command runs as given.
set -e
if [ "$1" = "nginx" ] || [ "$1" = "nginx-debug" ]; then
    for script in /docker-entrypoint.d/*.sh; do
        [ -x "$script" ] && "$script"
    done
fi
exec "$@"
