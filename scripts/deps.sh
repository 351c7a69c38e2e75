#!/usr/bin/env bash
# Installs what building and testing l4mesh need when it is missing:
# protoc (protobuf-compiler) for the etcd client's build, prlimit (util-linux)
# for the fd-exhaustion test, promtool (prometheus) to check /metrics, etcd
# (etcd-server), etcdctl (etcd-client) and dnsmasq (dnsmasq-base) as the
# fleet tests' real servers and their client, HAProxy, nginx (nginx-light with
# libnginx-mod-stream) and curl as the PROXY protocol and SNI tests' peers,
# openssl to make certificates and run TLS backends (etcd TLS, SNI), and
# cargo-nextest. Debian is kept from starting the packages' services.
set -euo pipefail

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/descriptor.proto), which etcd's protos import.
[[ -e /usr/include/google/protobuf/descriptor.proto ]] || missing+=(libprotobuf-dev)
command -v prlimit >/dev/null || missing+=(util-linux)
command -v promtool >/dev/null || missing+=(prometheus)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v openssl >/dev/null || missing+=(openssl)
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
# The PROXY protocol and SNI tests' real peers: HAProxy, nginx with its stream
# module (PROXY protocol receiver), curl (an HTTPS client).
[[ -x /usr/sbin/haproxy ]] || command -v haproxy >/dev/null || missing+=(haproxy)
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || missing+=(nginx-light)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
  echo "== installing ${missing[*]}"
  own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  ((own_policy)) && rm -f /usr/sbin/policy-rc.d
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
