#!/bin/sh
# Local helper (not used by the harness): boot the tests binary.
exec qemu-system-x86_64 -M pc -cpu max -smp 4 -m 256M -nographic -no-reboot -net none -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "${1:-target/x86_64-unknown-none/release/tests}"
