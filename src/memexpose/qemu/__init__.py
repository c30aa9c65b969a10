"""Stock QEMU as an oracle: capture its ``info mtree`` and rebuild the model.

* ``capture_mtree`` starts an installed ``qemu-system-*`` (stopped, TCG, no
  display), asks it over QMP on stdio for ``info mtree -o -D``,
  ``info mtree -f -o`` and ``info mtree -f``, and always reaps it;
* ``parse_mtree`` rebuilds that memory map with ``memexpose.memory`` (with
  the facts the tree text lacks taken from the flat text, see
  ``memexpose.qemu.mtree``); ``render_qemu_flat``/``render_qemu_tree`` print
  what our model makes of it, to compare with QEMU's own output;
* ``QtestClient`` drives a QEMU through the qtest protocol (with QMP), with
  the same verbs as ``memexpose.hw.QtestLikeDriver`` so one script runs on both.

This layer imports only ``memexpose.memory`` and ``memexpose.errors`` (and
the layers in between, through their packages).
"""

from memexpose.qemu.capture import MtreeCapture, capture_mtree
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
]
