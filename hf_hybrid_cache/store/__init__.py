"""The prefix store: `PrefixStore` (the facade) over a block index, a tier stack with an eviction policy, and
their persistence; block keys and model fingerprints. See docs/structure.md."""

from .prefix_store import PrefixStore, get_default_store, set_default_store
from .remote import RemoteBlock, RemoteTier

__all__ = ["PrefixStore", "RemoteBlock", "RemoteTier", "get_default_store", "set_default_store"]
