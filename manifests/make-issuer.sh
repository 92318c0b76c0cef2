#!/bin/sh
# Creates the mesh's issuer (a CA that signs the proxies' 24 h
# certificates): manifests/issuer/tls.crt and tls.key (PKCS#8), which the
# kustomization turns into the Secret conduit-system/conduit-issuer.
#
#   manifests/make-issuer.sh [trust-domain] [days]
#
# The key never leaves this machine except into the Secret. Keep a copy
# somewhere safe, or rotate by running this again and re-applying.
set -eu
trust_domain=${1:-cluster.local}
days=${2:-365}
dir=${ISSUER_DIR:-$(dirname "$0")/issuer}
mkdir -p "$dir"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/tls.key" -out "$dir/tls.crt" -days "$days" \
    -subj "/CN=identity.$trust_domain" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
echo "issuer for trust domain $trust_domain, valid $days days:"
echo "  $dir/tls.crt (the trust anchor: give it to 'conduit-controller inject --trust-anchors')"
echo "  $dir/tls.key (secret)"
