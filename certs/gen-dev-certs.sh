#!/usr/bin/env bash
# Makes a development PKI for localhost into DIR (default: certs/dev, which git ignores):
#   ca.pem / ca.key          a throw-away certificate authority
#   server.pem / server.key  server certificate for localhost, 127.0.0.1 and ::1, signed by the CA
#   client.pem / client.key  client certificate (CN=dev-client), signed by the CA, for mTLS
# Keys are generated fresh on every run and never committed: nothing here protects anything real.
# Needs openssl (Debian package `openssl`).
set -euo pipefail
dir="${1:-$(dirname "$0")/dev}"
days="${DAYS:-825}"
mkdir -p "$dir"
cd "$dir"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=Tern development CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() { # name subject extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$2" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$days" \
    -out "$1.pem" -extfile <(printf '%s\n' "$3") 2>/dev/null
  rm -f "$1.csr"
}
issue server "/CN=localhost" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
issue client "/CN=dev-client" "subjectAltName=DNS:dev-client
extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
rm -f ca.srl
chmod 600 ./*.key
openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
echo "development certificates written to $(pwd)"
