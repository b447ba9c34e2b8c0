# OpenBao server for docker-compose.yml: a real, sealed-at-start server with persistent storage
# (never `-dev`, which keeps everything in memory, unsealed, behind a known root token).
#
# What this is: one node, integrated (raft) storage on the `openbao-data` volume, Shamir seal (an
# operator, or the demo's `vault-init`, unseals it after every start), reachable only on the
# compose network (not published on the host).
# What it is not, yet: TLS. Traffic stays on the internal compose network; a deployment that
# spans hosts must set tls_cert_file/tls_key_file below and VAULT_ADDR=https://... Auto-unseal
# (a KMS or transit seal) and more raft nodes are what production availability would add.

ui = false

storage "raft" {
  path    = "/openbao/file"
  node_id = "openbao-1"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_disable     = true
}

api_addr     = "http://openbao:8200"
cluster_addr = "http://openbao:8201"

# The services' token (VAULT_TOKEN) is not renewed by the services; deploy/openbao_setup.py
# creates it with the maximum TTL below and renews it on every run.
default_lease_ttl = "768h"
max_lease_ttl     = "8760h"
