"""Is the Hugging Face hub in reach? One quick request instead of the hub client's retries.

Without network the hub client retries each file for a minute or more before it gives up. golong
asks once (a HEAD request with a short time limit, honouring proxy settings); when the hub is out of
reach or `HF_HUB_OFFLINE` is set, a name with a cached copy is loaded in offline mode (no network
attempts) and one without fails at once with one line.
"""

from __future__ import annotations

import os
import sys

_REACHABLE: dict[str, bool] = {}


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline_requested() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def reachable(timeout_s: float = 5.0) -> bool:
    """Does the hub answer at all (any HTTP status counts)? Asked once per endpoint and process."""
    import urllib.error
    import urllib.request

    url = endpoint()
    if url not in _REACHABLE:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
            _REACHABLE[url] = True
        except urllib.error.HTTPError:
            _REACHABLE[url] = True
        except (OSError, ValueError):
            _REACHABLE[url] = False
    return _REACHABLE[url]


def go_offline() -> None:
    """Switch the hub client (and `datasets`, if loaded) to offline mode: cached copies only, no retries."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    config = sys.modules.get("datasets.config")
    if config is not None:
        config.HF_HUB_OFFLINE = config.HF_DATASETS_OFFLINE = True


def why_unreachable() -> str:
    return "HF_HUB_OFFLINE is set" if offline_requested() else f"{endpoint()} is unreachable"
