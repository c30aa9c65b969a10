"""PCI: config space, BARs, buses, bridges, host bridges, MSI/MSI-X, enumeration.

Import from ``memexpose.hw`` (this package exports nothing of its own):

* ``config.py``: bytes and masks of a config space, capability lists;
* ``device.py``: ``PCIDevice`` (BAR mapping, INTx, DMA, reset);
* ``msi.py``, ``msix.py``: the MSI and MSI-X capabilities;
* ``bus.py``, ``bridge.py``, ``host.py``: buses, PCI-to-PCI bridges, host
  bridges with ECAM and 0xCF8/0xCFC;
* ``enumerate.py``: a firmware-like enumerator; ``info.py``: ``info pci`` text;
* ``regs.py``: register offsets and bits (``memexpose.hw.pci_regs``).
"""
