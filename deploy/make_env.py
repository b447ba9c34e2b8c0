"""Write the .env of docker-compose.yml, generating every secret (standard library only).

    python3 deploy/make_env.py demo            # the simulators: ready to `docker compose up -d`
    python3 deploy/make_env.py cloud           # Yandex Cloud: then set DARK_VM_IMAGE, YC_FOLDER_ID,
                                               # YC_SUBNET_ID, YC_SECURITY_GROUP_IDS and put the
                                               # key at YC_SA_KEY_PATH

Starts from deploy/compose.env.example, writes .env (mode 0600) at the repository root, refuses to
overwrite one (--force does), and prints nothing secret: the values are in the file.
"""

import argparse
import os
import re
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "compose.env.example"

GENERATED = {
    "POSTGRES_PASSWORD": lambda: secrets.token_hex(24),
    "REDIS_PASSWORD": lambda: secrets.token_hex(24),
    "ONBOARDING_VAULT_TOKEN": lambda: "dark-onb-" + secrets.token_hex(24),
    "PROVISIONER_VAULT_TOKEN": lambda: "dark-prov-" + secrets.token_hex(24),
    "DARK_API_TOKENS": lambda: "op-" + secrets.token_urlsafe(24),
    "DARK_ONBOARDING_TOKENS": lambda: "onb-" + secrets.token_urlsafe(24),
    "DARK_SESSION_SECRET": lambda: secrets.token_urlsafe(48),
    "FLOWER_BASIC_AUTH": lambda: "admin:" + secrets.token_urlsafe(18),
}
PER_PROFILE = {
    "demo": {
        "YC_IAM_TOKEN": lambda: "t1.sim-" + secrets.token_urlsafe(24),
        "YC_SECURITY_GROUP_IDS": lambda: "dark-sg-demo",
    },
    "cloud": {
        "YC_SA_KEY_FILE": lambda: "/run/secrets/yc-sa-key",
        "DARK_VM_IMAGE": lambda: "",
        "YC_SECURITY_GROUP_IDS": lambda: "",
        "RECONCILE_DRY_RUN": lambda: "true",
    },
}
LINE = re.compile(r"^(?P<name>[A-Z_][A-Z0-9_]*)=")


def render(profile: str, template: str) -> str:
    values = {name: make() for name, make in (GENERATED | PER_PROFILE[profile]).items()}
    values["COMPOSE_PROFILES"] = profile
    out = []
    for line in template.splitlines():
        match = LINE.match(line)
        if match and match["name"] in values:
            line = f"{match['name']}={values[match['name']]}"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/make_env.py", description=__doc__)
    parser.add_argument("profile", choices=sorted(PER_PROFILE))
    parser.add_argument("--output", type=Path, default=ROOT / ".env")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        fd = os.open(args.output, flags, 0o600)
    except FileExistsError:
        print(f"{args.output} exists; --force overwrites it", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(render(args.profile, TEMPLATE.read_text()))
    print(f"wrote {args.output} for the {args.profile} profile (mode 0600)")
    if args.profile == "cloud":
        print(
            "now set DARK_VM_IMAGE, YC_FOLDER_ID, YC_SUBNET_ID, YC_SECURITY_GROUP_IDS;"
            " put the key at YC_SA_KEY_PATH"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
