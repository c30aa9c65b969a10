"""Fixtures for the device tests: memexpose VMs in two processes (``memexpose_vm``)."""

from tests.devices.memexpose_vm import pci_pair, sockdir, vms

__all__ = ["pci_pair", "sockdir", "vms"]
