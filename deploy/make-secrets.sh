#!/bin/sh
# Creates the secret files docker-compose.yml mounts (under /run/secrets in the containers), each holding a random
# password of 40 letters and digits. A file that exists and is not empty is kept: the PostgreSQL passwords are set
# when the postgres volume is first created, so changing a file later needs ALTER ROLE ... PASSWORD as well.
#
#   sh deploy/make-secrets.sh            # creates ./secrets/ beside docker-compose.yml
#   sh deploy/make-secrets.sh DIR        # or DIR
#
# The folder is private to you (0700) and kept out of git (.gitignore) and out of image builds (.dockerignore); the
# files in it are 0644 because Compose bind-mounts them as they are, and the containers read them as their own
# unprivileged users (postgres, alignd, mlflow), not as you.
set -eu

dir="${1:-$(dirname "$0")/../secrets}"
mkdir -p "$dir"
chmod 0700 "$dir"

for name in postgres_password postgres_alignd_password postgres_mlflow_password alignd_http_token; do
    file="$dir/$name"
    if [ -s "$file" ]; then
        echo "kept    $file"
        continue
    fi
    secret="$(LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 40)"
    if [ "${#secret}" -ne 40 ]; then
        echo "make-secrets: could not read 40 random characters from /dev/urandom" >&2
        exit 1
    fi
    (umask 0022 && printf '%s\n' "$secret" > "$file")
    chmod 0644 "$file"
    echo "created $file"
done
