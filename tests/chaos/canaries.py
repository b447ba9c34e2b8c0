"""Canary secrets: distinctive values each tenant is onboarded with, searched for everywhere a
secret must never be — every process log, every Redis key and value (Celery's messages decoded:
JSON around base64 bodies), Postgres (a data-only dump), and every answer the gateway gave."""

import base64
import binascii
import re
import secrets

import redis

from tests.chaos.driver import Answer
from tests.chaos.harness import ChaosStack

MARK = "chaoscanary"
_BASE64 = re.compile(rb"[A-Za-z0-9+/_-]{24,}={0,2}")


def canaries_for(tenant: str) -> tuple[str, str]:
    """(claude token, nks pat); the Claude token must look like one or the guest rejects it."""
    return (f"sk-ant-oat01-{MARK}-{secrets.token_hex(12)}", f"nks-{MARK}-{secrets.token_hex(8)}")


def _decoded(blob: bytes, depth: int = 0) -> bytes:
    """The blob with every base64 run in it decoded too (recursively: Celery nests them)."""
    if depth > 3:
        return blob
    extra = []
    for run in _BASE64.findall(blob):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded = decode(run + b"=" * (-len(run) % 4))
            except (binascii.Error, ValueError):
                continue
            extra.append(_decoded(decoded, depth + 1))
    return blob + b"\n" + b"\n".join(extra)


def _found(where: str, blob: bytes, values: list[str]) -> list[str]:
    text = _decoded(blob)
    hits = [v for v in values if v.encode() in text]
    if not hits and MARK.encode() in text:
        hits = [f"a fragment marked {MARK}"]
    return [f"canary secret in {where}: {hit[:24]}..." for hit in hits]


def redis_values(client: redis.Redis) -> list[tuple[str, bytes]]:
    out = []
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key) or b""]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [k + b"=" + v for k, v in client.hgetall(key).items()]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            values = [client.dump(key) or b""]
        out.append((key.decode(errors="replace"), key + b"\n" + b"\n".join(values)))
    return out


def scan(chaos: ChaosStack, values: list[str], answers: list[Answer]) -> list[str]:
    found = []
    for path in chaos.log_files():
        found += _found(f"log {path.name}", path.read_bytes(), values)
    databases = [0]
    with redis.Redis.from_url(chaos.redis.url, socket_timeout=5) as client:
        databases += [int(db[2:]) for db in client.info("keyspace") if db != "db0"]
    for db in databases:
        url = chaos.redis.url.rsplit("/", 1)[0] + f"/{db}"
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            for key, blob in redis_values(client):
                found += _found(f"Redis db {db} key {key}", blob, values)
    found += _found("Postgres (pg_dump --data-only)", chaos.pg_dump().encode(), values)
    for a in answers:
        found += _found(f"the answer to {a.method} {a.path}", a.body.encode(), values)
    return found
