"""Peer prefill methods on spts's runtime, for side-by-side comparison with SPTS (``spts eval``, ``spts bench``).

* GemFilter (arXiv 2409.17422): a filter layer picks tokens, the unmodified model reads only them
  (:class:`GemFilter`, a prefill of its own);
* FastKV's token-selective propagation (arXiv 2502.01068): :func:`fastkv_config`, an SPTS schedule;
* LazyLLM-style progressive pruning (arXiv 2407.14057): :func:`lazyllm_config`, an SPTS schedule.

Each is exact at unlimited budget (every token kept: the unmodified model's logits and greedy tokens). Specs,
defaults and where we differ from the papers' code: docs/peers.md.
"""

from spts.methods.peers.base import PeerPrefill
from spts.methods.peers.fastkv import fastkv_config
from spts.methods.peers.gemfilter import GemFilter
from spts.methods.peers.lazyllm import lazyllm_config
from spts.methods.peers.spec import PEERS, SYNTAX, PeerSpec, build_peer, parse_peer_spec

__all__ = [
    "PEERS",
    "SYNTAX",
    "GemFilter",
    "PeerPrefill",
    "PeerSpec",
    "build_peer",
    "fastkv_config",
    "lazyllm_config",
    "parse_peer_spec",
]
