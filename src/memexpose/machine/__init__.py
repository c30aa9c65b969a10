"""Machines: memory + CPU (Unicorn) + devices + run loop, boards, loader, monitor.

* ``UnicornCPU`` (``cpu.py``): AArch64, ARM and x86_64 guest code over an
  ``AddressSpace``; RAM zero copy, MMIO through the memory layer, traps,
  IRQ entry, faults that name the access; ``plan_mappings`` (``mapping.py``)
  turns a flat view into Unicorn mappings;
* ``Machine`` (``machine.py``): the machine lock, the run loop and its
  ``StopReason``s, pause/resume/shutdown;
* boards (``boards.py``): ``virt`` and ``pc``, with the memexpose slot;
* ``load_image``/``load_elf``/``load_raw`` (``loader.py``);
* ``QmpMonitor`` (``monitor.py``): a QMP subset on a UNIX socket;
* ``MachineConfig`` (``config.py``): a machine described by a TOML file;
* ``build_fdt``/``parse_fdt`` (``fdt.py``): the device tree ``virt`` passes;
* the flagship's host side (``flagship.py``): the mxtee call ABI, its
  reference model, ``run_flagship_vm`` and ``check_flagship``
  (docs/flagship.md).

docs/machine.md describes the model.
"""

from memexpose.machine.boards import (
    BOARDS,
    Board,
    MapEntry,
    PcBoard,
    SlotSpec,
    VirtBoard,
    get_board,
    parse_size,
)
from memexpose.machine.config import (
    DEVICE_TYPES,
    DeviceSpec,
    MachineConfig,
    build_machine,
    load_config,
    register_device_type,
)
from memexpose.machine.cpu import (
    X86_IRQ_VECTOR,
    Arch,
    CpuExit,
    CpuExitKind,
    CpuFault,
    Trap,
    TrapHandler,
    UnicornCPU,
)
from memexpose.machine.fdt import FdtNode, build_fdt, parse_fdt
from memexpose.machine.flagship import (
    CallRecord,
    FlagshipResult,
    MessageArg,
    MxteeFunction,
    MxteeModel,
    TeeStatus,
    VmReport,
    check_flagship,
    load_report,
    run_flagship_vm,
    siphash24,
)
from memexpose.machine.loader import LoadedImage, load_elf, load_image, load_raw
from memexpose.machine.machine import Machine, RunState, StopKind, StopReason
from memexpose.machine.mapping import CpuMapping, plan_mappings
from memexpose.machine.monitor import QMP_VERSION, QmpMonitor, human_monitor_command

__all__ = [
    "BOARDS",
    "DEVICE_TYPES",
    "QMP_VERSION",
    "X86_IRQ_VECTOR",
    "Arch",
    "Board",
    "CallRecord",
    "CpuExit",
    "CpuExitKind",
    "CpuFault",
    "CpuMapping",
    "DeviceSpec",
    "FdtNode",
    "FlagshipResult",
    "LoadedImage",
    "Machine",
    "MachineConfig",
    "MapEntry",
    "MessageArg",
    "MxteeFunction",
    "MxteeModel",
    "PcBoard",
    "QmpMonitor",
    "RunState",
    "SlotSpec",
    "StopKind",
    "StopReason",
    "TeeStatus",
    "Trap",
    "TrapHandler",
    "UnicornCPU",
    "VirtBoard",
    "VmReport",
    "build_fdt",
    "build_machine",
    "check_flagship",
    "get_board",
    "human_monitor_command",
    "load_config",
    "load_elf",
    "load_image",
    "load_raw",
    "load_report",
    "parse_fdt",
    "parse_size",
    "plan_mappings",
    "register_device_type",
    "run_flagship_vm",
    "siphash24",
]
