"""Nodes: which node each pipeline device is on, and which link a send between two devices takes.

Devices fill nodes in contiguous blocks of ``devices_per_node`` (devices 0
to n-1 on node 0, n to 2n-1 on node 1, ...), as launchers number ranks
node by node; ``--node-map 0,0,1,1`` gives each device's node instead. A
send between two devices of one node takes the intra-node link (NVLink),
across nodes the inter-node link (InfiniBand). Which device runs which
stage is the schedule's placement (pipesched.schedule), so the two maps
together say which stage boundaries cross nodes.

>>> t = make_topology(4, 2, None, LinkKind("NVLink 4", 450e9, 5e-6), LinkKind("IB NDR", 50e9, 1e-5))
>>> t.nodes, t.link(0, 1).name, t.link(1, 2).name
((0, 0, 1, 1), 'NVLink 4', 'IB NDR')
>>> make_topology(3, 2, None, t.intra, t.inter)  # doctest: +ELLIPSIS
Traceback (most recent call last):
pipesched.errors.ConfigError: --devices 3 spans more than one node of 2 devices but is not a multiple of 2; ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .errors import ConfigError

__all__ = ["LinkKind", "Topology", "make_topology", "parse_node_map"]


class LinkKind(NamedTuple):
    """One kind of link: its name, bytes per second per direction, and seconds of latency."""

    name: str
    bandwidth: float
    latency: float


@dataclass(frozen=True)
class Topology:
    """The node of each of ``devices`` pipeline devices, and the two kinds of link between them.

    Nodes are contiguous blocks of ``per_node`` devices unless ``node_map``
    gives each device's node; a device's node is worked out when asked, so a
    topology of many devices costs nothing to build.
    """

    devices: int
    per_node: int
    intra: LinkKind
    inter: LinkKind
    node_map: tuple[int, ...] | None = None

    def node(self, device: int) -> int:
        return self.node_map[device] if self.node_map is not None else device // self.per_node

    def crosses(self, src: int, dst: int) -> bool:
        """Whether a send from device ``src`` to ``dst`` leaves its node."""
        return self.node(src) != self.node(dst)

    def link(self, src: int, dst: int) -> LinkKind:
        """The link a send from device ``src`` to ``dst`` takes."""
        return self.inter if self.crosses(src, dst) else self.intra

    @property
    def nodes(self) -> tuple[int, ...]:
        """The node of every device, in device order."""
        return tuple(self.node(d) for d in range(self.devices))

    @property
    def node_count(self) -> int:
        if self.node_map is not None:
            return len(set(self.node_map))
        return -(-self.devices // self.per_node)


def parse_node_map(text: str, devices: int) -> tuple[int, ...]:
    """``--node-map 0,0,1,1``: the node of each of ``devices`` devices, whole numbers from 0.

    >>> parse_node_map("0, 0, 1, 1", 4)
    (0, 0, 1, 1)
    """
    try:
        nodes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--node-map {text!r} is not a list of node numbers; give one per device, e.g. 0,0,1,1"
        ) from None
    if len(nodes) != devices:
        raise ConfigError(
            f"--node-map {text!r} names {len(nodes)} devices but the run has {devices}; give one node per device"
        )
    if any(n < 0 for n in nodes):
        raise ConfigError(f"--node-map {text!r} has a negative node; number nodes from 0")
    return nodes


def make_topology(
    devices: int, devices_per_node: int, node_map: str | None, intra: LinkKind, inter: LinkKind
) -> Topology:
    """The nodes of ``devices`` devices: ``node_map`` if given, else contiguous blocks of ``devices_per_node``.

    A count of devices that spans more than one node must fill whole nodes
    (a launcher places as many ranks on every node); give ``node_map`` for
    any other layout.
    """
    if isinstance(devices_per_node, bool) or not isinstance(devices_per_node, int) or devices_per_node < 1:
        raise ConfigError(f"--devices-per-node {devices_per_node!r} is not allowed; use 1 or more")
    if node_map is not None:
        nodes = parse_node_map(node_map, devices)
        full = max(set(nodes), key=lambda n: (nodes.count(n), -n))
        if nodes.count(full) > devices_per_node:  # a map may leave nodes part-empty, never overfill one
            raise ConfigError(
                f"--node-map {node_map!r} puts {nodes.count(full)} devices on node {full}, which holds "
                f"{devices_per_node}; spread them over more nodes, or give --devices-per-node {nodes.count(full)}"
            )
        return Topology(devices, devices_per_node, intra, inter, nodes)
    if devices > devices_per_node and devices % devices_per_node:
        smaller = devices // devices_per_node * devices_per_node
        larger = smaller + devices_per_node
        raise ConfigError(
            f"--devices {devices} spans more than one node of {devices_per_node} devices but is not a multiple of "
            f"{devices_per_node}; give --devices {larger} (or {smaller}), or each device's node with --node-map"
        )
    return Topology(devices, devices_per_node, intra, inter)
