"""Rotate the bundle key: a new transit key version, every bundle's data key re-wrapped under it,
then the old versions retired (`min_decryption_version` raised).

    python -m devtools.rotate_bundle_key         # or: make rotate-bundle-key

Reads DATABASE_URL, VAULT_ADDR, VAULT_TRANSIT_MOUNT and DARK_BUNDLE_KEY like the services do.
VAULT_TOKEN must be an operator's token: the services' policy may rewrap but neither rotate the
key nor configure it. Safe to run while the services run, and to run again after a failure (old
versions are retired only once no bundle is wrapped under one). Prints counts and the key
version, never key material or a bundle. Exit status 1 when the rotation did not finish.
"""

import sys

from shared.adapters.bundles import rotate_bundle_key
from shared.adapters.db import make_pool
from shared.adapters.vault_client import vault_client
from shared.adapters.vault_transit import TransitKeys
from shared.domain.errors import BundleBackendUnavailable
from shared.settings import Settings, load_settings


def main(settings: Settings) -> int:
    transit = TransitKeys(
        vault_client(settings),
        mount=settings.vault_transit_mount,
        key_name=settings.bundle_key_name,
    )
    pool = make_pool(settings.database_url, max_size=1)
    try:
        rotation = rotate_bundle_key(pool, transit)
    except BundleBackendUnavailable as exc:
        print(f"bundle key rotation did not finish: {exc}; run it again", file=sys.stderr)
        return 1
    finally:
        pool.close()
    print(
        f"bundle key {settings.bundle_key_name!r} now at version {rotation.key_version}: "
        f"{rotation.rewrapped} bundle(s) re-wrapped, {rotation.changed_meanwhile} replaced "
        "meanwhile by a write already under the new version; older versions retired"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(load_settings(service="rotate")))
