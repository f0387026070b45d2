#!/usr/bin/env bash
# Test certificates for a TLS Kafka broker, made with openssl alone:
#
#   scripts/kafka/certs.sh DIR
#
# writes into DIR:
#   ca.pem, ca.key            a CA (self-signed, 1 day)
#   broker.pem, broker.key    the broker's certificate (127.0.0.1 and
#                             localhost), signed by the CA
#   broker-keystore.pem       broker.key + broker.pem: the broker's PEM
#                             keystore (ssl.keystore.type=PEM)
#   client.pem, client.key    a client certificate (CN=sluice), signed by the
#                             CA, for listeners that require one (mTLS)
# Keys are unencrypted PKCS#8 (what Kafka's PEM keystore reads). For tests only.
set -euo pipefail
dir="${1:?usage: certs.sh DIR}"
mkdir -p "$dir"
cd "$dir"
quiet() { "$@" >/dev/null 2>&1 || { "$@"; exit 1; }; }

quiet openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=sluice-test-ca" \
    -keyout ca.key -out ca.pem
sign() { # name subject [extensions]
    quiet openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr"
    printf '%s\n' "$3" >"$1.ext"
    quiet openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
        -extfile "$1.ext" -out "$1.pem"
    rm -f "$1.csr" "$1.ext"
}
sign broker "/CN=localhost" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth"
sign client "/CN=sluice" "extendedKeyUsage=clientAuth"
cat broker.key broker.pem >broker-keystore.pem
chmod 600 ./*.key broker-keystore.pem
