"""Stock QEMU as an oracle: capture its ``info mtree`` and rebuild the model.

* ``capture_mtree`` starts an installed ``qemu-system-*`` (stopped, TCG, no
  display), asks it over QMP on stdio for ``info mtree -o -D``,
  ``info mtree -f -o`` and ``info mtree -f``, and always reaps it;
* ``parse_mtree`` rebuilds that memory map with ``memexpose.memory`` (with
  the facts the tree text lacks taken from the flat text, see
  ``memexpose.qemu.mtree``); ``render_qemu_flat``/``render_qemu_tree`` print
  what our model makes of it, to compare with QEMU's own output;
* ``QtestClient`` drives a QEMU through the qtest protocol (with QMP), with
  the same verbs as ``memexpose.hw.QtestLikeDriver`` so one script runs on both;
* ``QemuVM`` starts QEMU with shared memfd RAM (for remote devices), KVM
  when usable, qtest, and QMP through the PyPI ``qemu.qmp`` client
  (``QmpSession``); ``remote_device_pair``/``serve_device_argv`` connect a
  ``memexpose serve-device`` process to ``-device x-pci-proxy-dev,fd=N``.

This layer imports only ``memexpose.memory`` and ``memexpose.errors`` (and
the layers in between, through their packages).
"""

from memexpose.qemu.capture import MtreeCapture, capture_mtree
from memexpose.qemu.launcher import QemuVM, kvm_usable, remote_device_pair, serve_device_argv
from memexpose.qemu.mtree import (
    FlatHintRange,
    FlatHints,
    FlatHintSpace,
    ParsedMtree,
    diff_mtree,
    parse_flat_hints,
    parse_mtree,
    render_qemu_flat,
    render_qemu_tree,
)
from memexpose.qemu.qmpclient import QmpSession, load_qemu_qmp
from memexpose.qemu.qtest import QtestClient, halt_bios_image

__all__ = [
    "FlatHintRange",
    "FlatHintSpace",
    "FlatHints",
    "MtreeCapture",
    "ParsedMtree",
    "capture_mtree",
    "diff_mtree",
    "parse_flat_hints",
    "parse_mtree",
    "render_qemu_flat",
    "render_qemu_tree",
    "QtestClient",
    "halt_bios_image",
    "QemuVM",
    "QmpSession",
    "kvm_usable",
    "load_qemu_qmp",
    "remote_device_pair",
    "serve_device_argv",
]
